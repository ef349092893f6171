"""Medusa-2: Medusa heads and the backbone trained jointly (needs `pip install 'medusa-llm[train]'`).

L = L_LM + λ0 · Σ_k λ_k CE_k, with the backbone trained through LoRA (peft; --use_lora false for a full
fine-tune), the heads at --medusa_lr_multiplier × the learning rate, and a heads warm-up: a first
stage where only the heads learn (heads_only), or λ0 ramped up by a sine schedule (sine).
With --medusa_self_distillation (for self-distilled data) L_LM is KL(teacher ‖ student), the teacher
being the same model with its adapters disabled, averaged over target tokens.

The result in --output_dir, like every Trainer checkpoint, is a Medusa-2 checkpoint that
MedusaModel.from_pretrained loads: the heads, config.json naming the base, and the backbone's LoRA
adapter in adapter/ (merged into the base at load). A full fine-tune writes a full model instead
(backbone weights + medusa_head.*).
See docs/training.md.
"""

import contextlib
import math
import os
from dataclasses import dataclass, field

import torch
import transformers

from medusa.model import checkpoint, lora
from medusa.train.arguments import parse_arguments, require
from medusa.train.common import build_datasets, load_tokenizer, run_script, train_and_save
from medusa.train.data import IGNORE_INDEX
from medusa.train.losses import distillation_kl
from medusa.train.train_legacy import build_medusa_model
from medusa.train.trainer import MedusaTrainer

@dataclass
class Medusa2Arguments:
    medusa_heads_coefficient: float = field(default=0.2, metadata={"help": "λ0: weight of the heads' loss."})
    medusa_lr_multiplier: float = field(default=4.0, metadata={"help": "Heads learning rate: this × --learning_rate."})
    medusa_heads_warmup: str = field(default="heads_only", metadata={
        "help": "heads_only: only the heads learn for the first --medusa_warmup_steps; sine: λ0 rises as "
                "sin(π/2 · step / warmup steps); none.", "choices": ["heads_only", "sine", "none"]})
    medusa_warmup_steps: int = field(default=0, metadata={"help": "Length of the heads warm-up in optimizer steps."})
    medusa_self_distillation: bool = field(default=False, metadata={
        "help": "L_LM = KL(original model ‖ trained model) instead of cross-entropy on the data (needs LoRA)."})
    use_lora: bool = field(default=True, metadata={"help": "Train the backbone through LoRA (else: full fine-tune)."})
    lora_r: int = field(default=32)
    lora_alpha: int = field(default=16)
    lora_dropout: float = field(default=0.05)
    lora_target_modules: str = field(default="all-linear", metadata={"help": "Comma-separated module names."})

    def __post_init__(self):
        if self.use_lora:
            require("peft", "--use_lora (the default)")


def heads_coefficient(step: int, medusa2: Medusa2Arguments) -> float:
    """λ0 at optimizer step ``step``: ramped as λ0 · sin(π/2 · step / warm-up) under the sine warm-up."""
    if medusa2.medusa_heads_warmup == "sine" and step < medusa2.medusa_warmup_steps:
        return medusa2.medusa_heads_coefficient * math.sin(math.pi / 2 * step / medusa2.medusa_warmup_steps)
    return medusa2.medusa_heads_coefficient


@contextlib.contextmanager
def detached_backbone(model):
    """Within: the backbone's last hidden states are detached, so only the heads receive gradients."""

    def detach(module, args, output):
        output.last_hidden_state = output.last_hidden_state.detach()
        return output

    handle = model.decoder.register_forward_hook(detach)
    try:
        yield
    finally:
        handle.remove()


def next_token_loss(logits, labels, teacher_logits=None) -> torch.Tensor:
    """L_LM over ``[B, S, V]`` logits: CE on ``labels`` shifted by one, or KL to ``teacher_logits`` there."""
    valid = labels[:, 1:] != IGNORE_INDEX
    logits = logits[:, :-1][valid]  # [n, V]: only positions with a target go to fp32
    if teacher_logits is None:
        return torch.nn.functional.cross_entropy(logits.float(), labels[:, 1:][valid])
    return distillation_kl(logits, teacher_logits[:, :-1][valid])


class Medusa2Trainer(MedusaTrainer):
    """Joint loss, heads learning-rate multiplier, heads warm-up; logs ``lm_loss`` and ``lambda0``."""

    def __init__(self, *args, medusa2: Medusa2Arguments, peft_model=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.medusa2, self.peft_model = medusa2, peft_model
        self._lm_loss = []

    def lambda0(self) -> float:
        return heads_coefficient(self.state.global_step, self.medusa2)

    def heads_only(self) -> bool:
        m = self.medusa2
        return m.medusa_heads_warmup == "heads_only" and self.state.global_step < m.medusa_warmup_steps

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        unwrapped = self.accelerator.unwrap_model(model)
        labels = inputs["labels"]
        if self.heads_only():  # stage 1: the backbone gets no gradient at all
            with detached_backbone(unwrapped):  # through the DDP wrapper, so that head gradients are synced
                head_logits = model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"])
            loss = self.head_loss(head_logits, labels)
        else:
            head_logits, logits = model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"],
                                        output_orig=True)
            teacher = None
            if self.medusa2.medusa_self_distillation:
                with torch.no_grad(), self.peft_model.disable_adapter():
                    hidden = unwrapped.hidden_states(inputs["input_ids"], inputs["attention_mask"])
                    teacher = unwrapped.lm_logits(hidden)
            lm_loss = next_token_loss(logits, labels, teacher)
            self._lm_loss.append(lm_loss.detach())
            loss = lm_loss + self.lambda0() * self.head_loss(head_logits, labels)
        return (loss, {"loss": loss}) if return_outputs else loss

    def log(self, logs, *args, **kwargs):
        if self._lm_loss:
            key = "eval_lm_loss" if any(k.startswith("eval_") for k in logs) else "lm_loss"
            logs[key] = round(torch.stack(self._lm_loss).mean().item(), 4)
            self._lm_loss = []
        logs.setdefault("lambda0", round(self.lambda0(), 4))
        super().log(logs, *args, **kwargs)

    def create_optimizer(self, model=None):
        """AdamW (or ``--optim``) with the heads in their own group at ``--medusa_lr_multiplier`` × lr."""
        if self.optimizer is None:
            model = self.accelerator.unwrap_model(model or self.model)
            heads = [p for p in model.medusa_head.parameters() if p.requires_grad]
            head_ids = {id(p) for p in heads}
            backbone = [p for p in model.parameters() if p.requires_grad and id(p) not in head_ids]
            optimizer_cls, kwargs = transformers.Trainer.get_optimizer_cls_and_kwargs(self.args, model)
            groups = [{"params": backbone, "weight_decay": self.args.weight_decay},
                      {"params": heads, "weight_decay": self.args.weight_decay,
                       "lr": self.args.learning_rate * self.medusa2.medusa_lr_multiplier}]
            self.optimizer = optimizer_cls([g for g in groups if g["params"]], **kwargs)
        return self.optimizer

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        """Heads (+ adapters with LoRA; + the backbone for a full fine-tune)."""
        output_dir = output_dir or self.args.output_dir
        super().save_model(output_dir, _internal_call)
        if not self.args.should_save:
            return
        if self.peft_model is not None:
            self.peft_model.save_pretrained(os.path.join(output_dir, checkpoint.ADAPTER_DIR))
        else:
            save_full_model(self.accelerator.unwrap_model(self.model), output_dir)

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model=None) -> None:
        super()._load_from_checkpoint(resume_from_checkpoint, model)
        if self.peft_model is None:
            raise SystemExit("Resuming a full fine-tune is not supported; resume LoRA runs, or start over.")
        from peft import set_peft_model_state_dict
        from safetensors.torch import load_file

        adapter = load_file(os.path.join(resume_from_checkpoint, checkpoint.ADAPTER_DIR, lora.ADAPTER_WEIGHTS))
        set_peft_model_state_dict(self.peft_model, adapter)


def save_full_model(model, output_dir: str) -> None:
    """The FasterDecoding full-model layout: the backbone's weights plus ``medusa_head.*``, one config."""
    base = model.base_model
    for key in ("medusa_num_heads", "medusa_num_layers"):
        setattr(base.config, key, getattr(model.config, key))
    base.config.version = "2" if model.config.shared_lm_head else "1"
    state = dict(base.state_dict())
    state.update({f"{checkpoint.FULL_MODEL_PREFIX}{k}": v for k, v in model.medusa_head.state_dict().items()})
    base.save_pretrained(output_dir, state_dict=state)
    # A heads-only file next to it would make the directory read as heads-only on the un-merged base.
    for name in (checkpoint.HEADS_SAFETENSORS, checkpoint.HEADS_PT):
        if os.path.exists(os.path.join(output_dir, name)):
            os.remove(os.path.join(output_dir, name))


def add_lora(model, medusa2: Medusa2Arguments):
    """LoRA adapters injected into ``model.base_model`` in place; returns the ``PeftModel`` that controls them."""
    from peft import LoraConfig, get_peft_model

    targets = medusa2.lora_target_modules
    config = LoraConfig(r=medusa2.lora_r, lora_alpha=medusa2.lora_alpha, lora_dropout=medusa2.lora_dropout,
                        target_modules=targets if targets == "all-linear" else targets.split(","),
                        task_type="CAUSAL_LM")
    return get_peft_model(model.base_model, config)


def main(argv: list[str] | None = None) -> dict:
    model_args, data_args, training_args, medusa2 = parse_arguments(__doc__, argv, Medusa2Arguments)
    if medusa2.medusa_self_distillation and not medusa2.use_lora:
        raise SystemExit("--medusa_self_distillation needs --use_lora: the teacher is the model without adapters.")
    if model_args.load_in_4bit or model_args.load_in_8bit:
        raise SystemExit("Quantised bases are for Medusa-1 (train_legacy.py); Medusa-2 merges into the backbone.")
    if training_args.medusa_distillation:
        raise SystemExit("--medusa_distillation is for Medusa-1 (train_legacy.py): here the base model itself learns.")
    if medusa2.medusa_heads_warmup == "heads_only" and medusa2.medusa_warmup_steps:
        training_args.ddp_find_unused_parameters = True  # the backbone has no gradient in stage 1
    tokenizer = load_tokenizer(model_args)
    train_set, eval_set, collator = build_datasets(data_args, tokenizer, model_args.model_name_or_path, training_args)
    model = build_medusa_model(model_args, training_args)
    peft_model = None
    if medusa2.use_lora:
        peft_model = add_lora(model, medusa2)
    else:
        model.base_model.requires_grad_(True)
        model.base_model.float()  # fp32 master weights; autocast computes in bf16
    trainer = Medusa2Trainer(model=model, args=training_args, train_dataset=train_set, eval_dataset=eval_set,
                             data_collator=collator, medusa2=medusa2, peft_model=peft_model)
    summary = train_and_save(trainer, model_args, training_args, train_set, eval_set,
                             {"lora": medusa2.use_lora, "self_distillation": medusa2.medusa_self_distillation},
                             eval_metrics=("lm_loss",))
    if training_args.should_save and peft_model is None:
        tokenizer.save_pretrained(training_args.output_dir)  # a full model; the LoRA checkpoint names its base
    return summary

if __name__ == "__main__":
    run_script(main)
