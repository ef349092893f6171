"""Command-line arguments shared by the Medusa-1 and Medusa-2 training scripts (``HfArgumentParser``)."""

import argparse
import importlib.util
from dataclasses import dataclass, field, fields
from pathlib import Path

import transformers

_TRAINER_FIELDS = {f.name for f in fields(transformers.TrainingArguments)}
# transformers 5.x folded --warmup_ratio into a fractional --warmup_steps; the documented command keeps the flag.
_NATIVE_WARMUP_RATIO = "warmup_ratio" in _TRAINER_FIELDS
USAGE = "%(prog)s --model_name_or_path BASE --data_path DATA --output_dir DIR [option ...]"


def require(module: str, what: str) -> None:
    """Refuses ``what`` (an option) when ``module``, part of the ``[train]`` extra, is not installed."""
    if importlib.util.find_spec(module) is None:
        raise ValueError(f"{what} needs {module}, which is not installed: pip install 'medusa-llm[train]'")


@dataclass
class ModelArguments:
    model_name_or_path: str = field(metadata={"help": "Base model directory (a Hugging Face causal LM)."})
    load_in_4bit: bool = field(default=False, metadata={"help": "Frozen base quantised to 4 bit (bitsandbytes NF4)."})
    load_in_8bit: bool = field(default=False, metadata={"help": "Frozen base quantised to 8 bit (bitsandbytes)."})


@dataclass
class DataArguments:
    data_path: str = field(metadata={"help": "Training conversations: generate.py JSONL or ShareGPT JSON."})
    eval_data_path: str | None = field(default=None, metadata={"help": "Held-out conversations, same formats."})
    max_train_samples: int | None = field(default=None, metadata={"help": "Use only the first N conversations."})


@dataclass
class MedusaTrainingArguments(transformers.TrainingArguments):
    model_max_length: int = field(default=2048, metadata={"help": "Longer conversations are truncated."})
    medusa_num_heads: int = field(default=5, metadata={"help": "Number of Medusa heads."})
    medusa_num_layers: int = field(default=1, metadata={"help": "ResBlocks per head."})
    medusa_head_type: str = field(default="own_lm_head", metadata={
        "help": "own_lm_head (each head has its own vocabulary projection) or shared_lm_head ('version 2': "
                "heads reuse the frozen base lm_head).", "choices": ["own_lm_head", "shared_lm_head"]})
    medusa_decay_coefficient: float = field(default=0.8, metadata={
        "help": "Loss weight of head k is decay**k (1.0 = plain sum as in the reference script)."})
    medusa_distillation: float = field(default=0.0, metadata={
        "help": "α in [0, 1]: each head's loss is (1 − α)·CE on the data + α·KL(base ‖ head), the frozen base "
                "model's distribution of the same token as a soft label (Medusa-1 only)."})
    medusa_init_heads: str | None = field(default=None, metadata={
        "help": "Start the heads from this checkpoint (any layout MedusaModel.from_pretrained reads) instead of "
                "fresh ones; its heads, layers and head type must equal the options above."})
    warmup_ratio: float = field(default=0.0, metadata={"help": "Linear warm-up over this fraction of the steps."})
    remove_unused_columns: bool = field(default=False, metadata={"help": "Keep labels for compute_loss."})
    label_names: list[str] | None = field(default_factory=lambda: ["labels"], metadata={"help": "Batch label keys."})
    prediction_loss_only: bool = field(default=True, metadata={"help": "Evaluation computes losses and accuracies."})
    ddp_find_unused_parameters: bool | None = field(default=False, metadata={"help": "All head parameters are used."})

    def __post_init__(self):
        if self.deepspeed:
            require("deepspeed", "--deepspeed")
        if not 0 <= self.medusa_distillation <= 1:
            raise ValueError(f"--medusa_distillation must be in [0, 1], got {self.medusa_distillation}.")
        if self.warmup_ratio and not _NATIVE_WARMUP_RATIO:
            if not 0 <= self.warmup_ratio < 1:
                raise ValueError(f"--warmup_ratio must be in [0, 1), got {self.warmup_ratio}.")
            self.warmup_steps = self.warmup_ratio
        super().__post_init__()
        path = Path(self.output_dir).absolute()
        existing = next(p for p in (path, *path.parents) if p.exists())
        if not existing.is_dir():  # found now, not when saving after the whole training
            raise ValueError(f"--output_dir {self.output_dir}: {existing} is a file, not a folder.")


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Defaults in the option help (as HfArgumentParser's), the description as written."""


def parse_arguments(description: str, argv: list[str] | None, *dataclass_types) -> tuple:
    """``(ModelArguments, DataArguments, MedusaTrainingArguments, *dataclass_types)`` parsed from ``argv``.

    ``--help`` lists the Medusa options first and Hugging Face's TrainingArguments (about a hundred)
    after them. Invalid values end in a usage line and one error line, not a traceback.
    """
    parser = transformers.HfArgumentParser((ModelArguments, DataArguments, MedusaTrainingArguments, *dataclass_types),
                                           description=description, usage=USAGE, formatter_class=_HelpFormatter)
    # HfArgumentParser puts every field in one group, the TrainingArguments ones first: move those to the end.
    trainer = parser.add_argument_group("Hugging Face TrainingArguments (all apply)")
    for action in list(parser._optionals._group_actions):
        if action.dest in _TRAINER_FIELDS:
            parser._optionals._group_actions.remove(action)
            trainer._group_actions.append(action)
    try:
        return parser.parse_args_into_dataclasses(args=argv)
    except ValueError as e:  # raised by the dataclasses' checks of the values
        parser.error(str(e))
