"""Medusa-1 training: Medusa heads on a fully frozen base model.

Run as `python -m medusa.train.train_legacy`, `python medusa/train/train_legacy.py` or under
`torchrun --nproc_per_node=N medusa/train/train_legacy.py` (DDP; add `--deepspeed deepspeed.json` for
ZeRO-2/3, which needs `pip install 'medusa-llm[train]'`). Data: `python -m data_generation.generate` output,
ShareGPT JSON, or a JSON list of message lists. The final heads go to --output_dir in the layout
MedusaModel.from_pretrained reads, next to training_summary.json. See docs/training.md.
"""

import torch

from medusa.model import MedusaConfig, MedusaModel, checkpoint
from medusa.train.arguments import parse_arguments
from medusa.train.common import build_datasets, gathered, load_base_model, load_tokenizer, run_script, train_and_save
from medusa.train.trainer import MedusaTrainer


def build_medusa_model(model_args, training_args) -> MedusaModel:
    """Base model frozen (lm_head included) plus fp32 heads: fresh, or those of ``--medusa_init_heads``."""
    base = load_base_model(model_args, training_args)
    base.requires_grad_(False)
    config = MedusaConfig(medusa_num_heads=training_args.medusa_num_heads,
                          medusa_num_layers=training_args.medusa_num_layers,
                          base_model_name_or_path=model_args.model_name_or_path,
                          head_type=training_args.medusa_head_type)
    with gathered(base.get_output_embeddings().parameters()):  # heads copy the whole lm_head
        model = MedusaModel(base, config)
    if training_args.medusa_init_heads:
        load_initial_heads(model, training_args.medusa_init_heads)
    # fp32 master weights for the heads; autocast runs them in bf16 with --bf16.
    model.medusa_head.float()
    return model


def load_initial_heads(model: MedusaModel, path: str) -> None:
    """Loads the heads saved in ``path`` into ``model``, refusing a checkpoint of another shape."""
    try:
        state = checkpoint.read_heads_state_dict(path)
        saved = checkpoint.resolve_config(checkpoint.read_config(path), state, model.config.hidden_size,
                                          model.config.vocab_size)
    except checkpoint.CheckpointError as e:
        raise SystemExit(f"--medusa_init_heads: {e}") from None
    for option, field in (("--medusa_num_heads", "medusa_num_heads"), ("--medusa_num_layers", "medusa_num_layers"),
                          ("--medusa_head_type", "head_type")):
        if getattr(saved, field) != getattr(model.config, field):
            raise SystemExit(f"--medusa_init_heads {path} has {field}={getattr(saved, field)!r}, but "
                             f"{option} is {getattr(model.config, field)!r}: pass the checkpoint's.")
    checkpoint.load_heads_strict(model.medusa_head, state)


def main(argv: list[str] | None = None) -> dict:
    model_args, data_args, training_args = parse_arguments(__doc__, argv)
    tokenizer = load_tokenizer(model_args)
    train_set, eval_set, collator = build_datasets(data_args, tokenizer, model_args.model_name_or_path, training_args)
    model = build_medusa_model(model_args, training_args)
    trainer = MedusaTrainer(model=model, args=training_args, train_dataset=train_set, eval_dataset=eval_set,
                            data_collator=collator)
    return train_and_save(trainer, model_args, training_args, train_set, eval_set)

if __name__ == "__main__":
    torch.set_float32_matmul_precision("high")
    run_script(main)
