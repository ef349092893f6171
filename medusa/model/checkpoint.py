"""Reading and writing Medusa head checkpoints in every layout of DESIGN.md §2.

Read: FasterDecoding heads-only (``medusa_lm_head.pt`` or ``.safetensors``), FasterDecoding full model
(``medusa_head.*`` keys inside the model weights), "version 2" heads, and our own (heads-only keys,
``config.json`` with ``model_type: medusa_heads``). Write: heads-only, which TGI and TensorRT-LLM
read unchanged. Loading is strict: a missing, unexpected or mis-shaped key is an error that names it.
"""

import json
import logging
import os
import re

import torch
from safetensors.torch import load_file, save_file

from .config import MedusaConfig
from .heads import MedusaHeads

logger = logging.getLogger(__name__)

HEADS_SAFETENSORS = "medusa_lm_head.safetensors"
HEADS_PT = "medusa_lm_head.pt"
FULL_MODEL_PREFIX = "medusa_head."
_HEAD_KEY = re.compile(r"^(\d+)\.(\d+)\.")


class CheckpointError(ValueError):
    """A Medusa checkpoint that cannot be loaded as asked; the message says what is wrong."""


def read_config(path: str) -> dict:
    config_file = os.path.join(path, "config.json")
    if not os.path.isdir(path):
        raise CheckpointError(f"Medusa checkpoint {path!r} is not a directory.")
    if not os.path.isfile(config_file):
        raise CheckpointError(f"No config.json in {path!r}: not a Medusa checkpoint.")
    with open(config_file) as f:
        config = json.load(f)
    if "medusa_num_heads" not in config:
        raise CheckpointError(
            f"{config_file} has no 'medusa_num_heads': {path!r} is a plain model, not a Medusa checkpoint."
        )
    return config


def is_full_model(path: str) -> bool:
    """True for the FasterDecoding full-model layout (heads inside the base model's weights)."""
    return not any(os.path.isfile(os.path.join(path, f)) for f in (HEADS_SAFETENSORS, HEADS_PT))


def _read_full_model_heads(path: str) -> dict[str, torch.Tensor]:
    """The ``medusa_head.*`` tensors of a full-model checkpoint, prefix stripped, read shard by shard."""
    for index_name, reader in (
        ("model.safetensors.index.json", load_file),
        ("pytorch_model.bin.index.json", lambda f: torch.load(f, map_location="cpu", weights_only=True)),
    ):
        index_file = os.path.join(path, index_name)
        if os.path.isfile(index_file):
            with open(index_file) as f:
                weight_map = json.load(f)["weight_map"]
            shards = sorted({shard for key, shard in weight_map.items() if key.startswith(FULL_MODEL_PREFIX)})
            state = {}
            for shard in shards:
                state.update(reader(os.path.join(path, shard)))
            break
    else:
        if os.path.isfile(os.path.join(path, "model.safetensors")):
            state = load_file(os.path.join(path, "model.safetensors"))
        elif os.path.isfile(os.path.join(path, "pytorch_model.bin")):
            state = torch.load(os.path.join(path, "pytorch_model.bin"), map_location="cpu", weights_only=True)
        else:
            raise CheckpointError(
                f"No Medusa heads in {path!r}: expected {HEADS_SAFETENSORS}, {HEADS_PT}, or model weights "
                f"with '{FULL_MODEL_PREFIX}*' keys."
            )
    heads = {k[len(FULL_MODEL_PREFIX) :]: v for k, v in state.items() if k.startswith(FULL_MODEL_PREFIX)}
    if not heads:
        raise CheckpointError(f"The model weights in {path!r} hold no '{FULL_MODEL_PREFIX}*' keys: no Medusa heads.")
    return heads


def read_heads_state_dict(path: str) -> dict[str, torch.Tensor]:
    """Head tensors of any supported layout, with heads-only key names ``{i}.{j}...``."""
    if os.path.isfile(os.path.join(path, HEADS_SAFETENSORS)):
        return load_file(os.path.join(path, HEADS_SAFETENSORS))
    if os.path.isfile(os.path.join(path, HEADS_PT)):
        return torch.load(os.path.join(path, HEADS_PT), map_location="cpu", weights_only=True)
    return _read_full_model_heads(path)


def _count_heads(state_dict: dict[str, torch.Tensor]) -> int:
    indices = {int(m.group(1)) for m in map(_HEAD_KEY.match, state_dict) if m}
    return max(indices) + 1 if indices else 0


def resolve_config(raw: dict, state_dict: dict[str, torch.Tensor], hidden_size: int, vocab_size: int) -> MedusaConfig:
    """The MedusaConfig to build, checked against the weights.

    FasterDecoding's published Vicuna configs understate the head count (2 where the weights hold
    5), so for configs not written by us the weights decide, with a warning. For our own format a
    disagreement is an error.
    """
    ours = raw.get("model_type") == MedusaConfig.model_type
    in_weights = _count_heads(state_dict)
    num_heads = raw["medusa_num_heads"]
    if in_weights != num_heads:
        if ours or in_weights < num_heads:
            raise CheckpointError(
                f"config.json says medusa_num_heads={num_heads} but the weights hold {in_weights} heads."
            )
        logger.warning("config.json says medusa_num_heads=%d; the weights hold %d: using %d.", num_heads, in_weights, in_weights)
        num_heads = in_weights
    for field, actual in (("hidden_size", hidden_size), ("vocab_size", vocab_size)):
        if ours and raw.get(field) is not None and raw[field] != actual:
            raise CheckpointError(f"The heads were trained for {field}={raw[field]} but the base model has {field}={actual}.")
    return MedusaConfig(
        medusa_num_heads=num_heads,
        medusa_num_layers=raw.get("medusa_num_layers", 1),
        base_model_name_or_path=raw.get("base_model_name_or_path"),
        version=str(raw.get("version", "1")),
        hidden_size=hidden_size,
        vocab_size=vocab_size,
    )


def load_heads_strict(heads: MedusaHeads, state_dict: dict[str, torch.Tensor]) -> None:
    """``heads.load_state_dict`` that names every missing, unexpected or mis-shaped key."""
    expected = heads.state_dict()
    missing = sorted(set(expected) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(expected))
    problems = []
    if missing:
        problems.append(f"missing keys {missing}")
    if unexpected:
        problems.append(f"unexpected keys {unexpected}")
    for key in sorted(set(expected) & set(state_dict)):
        if expected[key].shape != state_dict[key].shape:
            problems.append(
                f"{key} has shape {tuple(state_dict[key].shape)} but the base model needs {tuple(expected[key].shape)}"
                " (wrong hidden or vocabulary size?)"
            )
    if problems:
        raise CheckpointError("Medusa heads do not match the checkpoint: " + "; ".join(problems) + ".")
    heads.load_state_dict(state_dict, strict=True)


def save_heads(path: str, heads: MedusaHeads, config: MedusaConfig) -> None:
    """Write ``config.json`` + ``medusa_lm_head.safetensors`` (heads-only key names)."""
    os.makedirs(path, exist_ok=True)
    config.save_pretrained(path)
    state = {k: v.detach().to("cpu").contiguous() for k, v in heads.state_dict().items()}
    save_file(state, os.path.join(path, HEADS_SAFETENSORS), metadata={"format": "pt"})
