"""``transformers.Trainer`` for Medusa heads: weighted per-head loss, per-head metrics, heads-only checkpoints."""

import torch
import transformers

from medusa.model import checkpoint

from .common import gathered
from .losses import head_weights, medusa_head_losses


class MedusaTrainer(transformers.Trainer):
    """Trains the heads of a :class:`medusa.model.MedusaModel` on a frozen base (Medusa-1).

    Loss Σ_k λ_k L_k, L_k = CE_k, or with ``--medusa_distillation`` α the mix (1 − α)·CE_k + α·KL to the
    base model's distribution of the same token. Logged with every training log and evaluation, per head k:
    ``medusa{k}_loss``, ``medusa{k}_top1``, ``medusa{k}_top5`` (``eval_`` prefix on held-out data),
    averaged over all targets since the previous log and over all ranks.
    Checkpoints hold the heads only (the base never changes) in the ``MedusaModel.save_pretrained`` layout.
    """

    loss_is_scaled_for_ga = False  # compute_loss returns a per-batch mean

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.lambdas = torch.tensor(head_weights(self.model.config.medusa_num_heads, self.args.medusa_decay_coefficient))
        # Per head: (targets, top-1 hits, top-5 hits, summed CE); "train" and "eval" accumulate separately.
        self._head_stats = {}

    def head_loss(self, head_logits: torch.Tensor, labels: torch.Tensor,
                  teacher_logits: torch.Tensor | None = None) -> torch.Tensor:
        """Σ_k λ_k L_k for head logits ``[heads, B, S, V]`` (teacher: base logits ``[B, S, V]``); records statistics."""
        losses, stats = medusa_head_losses(head_logits, labels, teacher_logits, self.args.medusa_distillation)
        split = "train" if self.model.training else "eval"
        self._head_stats[split] = self._head_stats.get(split, 0) + stats
        return (self.lambdas.to(losses.device) * losses).sum()

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        distill = self.args.medusa_distillation > 0
        out = model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"], output_orig=distill)
        head_logits, teacher = out if distill else (out, None)
        loss = self.head_loss(head_logits, inputs["labels"], teacher)
        return (loss, {"loss": loss}) if return_outputs else loss

    def log(self, logs: dict[str, float], *args, **kwargs) -> None:
        split = "eval" if any(k.startswith("eval_") for k in logs) else "train"
        stats = self._head_stats.pop(split, None)
        if stats is not None:
            if torch.distributed.is_available() and torch.distributed.is_initialized():
                torch.distributed.all_reduce(stats)
            prefix = "eval_" if split == "eval" else ""
            count = stats[:, 0].clamp(min=1)
            for k, (top1, top5, loss) in enumerate((stats[:, 1:] / count[:, None]).tolist()):
                logs[f"{prefix}medusa{k}_loss"] = round(loss, 4)
                logs[f"{prefix}medusa{k}_top1"] = round(top1, 4)
                logs[f"{prefix}medusa{k}_top5"] = round(top5, 4)
        super().log(logs, *args, **kwargs)

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        """Heads in the ``MedusaModel.save_pretrained`` layout (gathered first under ZeRO-3)."""
        model = self.accelerator.unwrap_model(self.model)
        with gathered(model.medusa_head.parameters()):
            if self.args.should_save:
                model.save_pretrained(output_dir or self.args.output_dir)

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model=None) -> None:
        model = self.accelerator.unwrap_model(model or self.model)
        checkpoint.load_heads_strict(model.medusa_head, checkpoint.read_heads_state_dict(resume_from_checkpoint))
