"""Reading and writing Medusa head checkpoints in every layout in use (docs/design.md, Heads and checkpoint layouts).

Read: FasterDecoding heads-only (``medusa_lm_head.pt`` or ``.safetensors``), FasterDecoding full model
(``medusa_head.*`` keys inside the model weights), "version 2" heads, vLLM's layout (``model_type:
medusa``, as ``medusa.export --format vllm`` writes it), and our own (heads-only keys, ``config.json``
with ``model_type: medusa_heads``; a Medusa-2 checkpoint adds the backbone's LoRA adapter in ``adapter/``). Write: heads-only (TGI's router needs the config without
``model_type``: serve it ``medusa.export --format tgi``'s copy). Loading is strict: a missing, unexpected or mis-shaped key is an error that names it.
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
ADAPTER_DIR = "adapter"  # Medusa-2: the backbone's LoRA adapter, in peft's layout, beside the heads
VLLM_MODEL_TYPE = "medusa"
VLLM_WEIGHTS = "model.safetensors"
_VLLM_KEY = re.compile(r"^(?:blocks\.(\d+)\.layers\.(\d+)\.(weight|bias)|lm_heads\.(\d+)\.weight)$")
_HEAD_KEY = re.compile(r"^(\d+)\.(\d+)\.")


class CheckpointError(ValueError):
    """A Medusa checkpoint that cannot be loaded as asked; the message says what is wrong."""


def read_json(path: str):
    """The JSON in ``path``; CheckpointError naming the file (and the line) when it is not JSON."""
    try:
        with open(path) as f:
            return json.load(f)
    except (ValueError, UnicodeDecodeError) as e:  # JSONDecodeError is a ValueError
        raise CheckpointError(f"{path} is not valid JSON ({e}).") from None


def _from_vllm_config(config: dict) -> dict:
    """A vLLM Medusa config (as ``medusa.export --format vllm`` writes it) in FasterDecoding's field names."""
    return {
        "medusa_num_heads": config["num_heads"],
        "medusa_num_layers": config.get("num_hidden_layers", 1),
        "version": "2" if config.get("original_lm_head") else "1",
        "base_model_name_or_path": config.get("base_model_name_or_path"),
    }


def is_vllm(config: dict) -> bool:
    """True for vLLM's Medusa layout: ``model_type: medusa`` and ``blocks.*`` / ``lm_heads.*`` weights."""
    return config.get("model_type") == VLLM_MODEL_TYPE and "num_heads" in config


def read_config(path: str) -> dict:
    """``config.json`` of a Medusa checkpoint, in FasterDecoding's field names whatever the layout."""
    config_file = os.path.join(path, "config.json")
    if not os.path.isdir(path):
        raise CheckpointError(f"Medusa checkpoint {path!r} is not a directory.")
    if not os.path.isfile(config_file):
        raise CheckpointError(f"No config.json in {path!r}: not a Medusa checkpoint.")
    config = read_json(config_file)
    if not isinstance(config, dict):
        raise CheckpointError(f"{config_file} is not a JSON object.")
    if is_vllm(config):
        return _from_vllm_config(config)
    if "medusa_num_heads" not in config:
        raise CheckpointError(
            f"{config_file} has no 'medusa_num_heads': {path!r} is a plain model, not a Medusa checkpoint."
        )
    return config


def _vllm_config(path: str) -> dict | None:
    """The raw config of a vLLM-layout checkpoint at ``path``, None for other layouts."""
    config_file = os.path.join(path, "config.json")
    config = read_json(config_file) if os.path.isfile(config_file) else None
    return config if isinstance(config, dict) and is_vllm(config) else None


def is_full_model(path: str) -> bool:
    """True for the FasterDecoding full-model layout (heads inside the base model's weights)."""
    heads_files = any(os.path.isfile(os.path.join(path, f)) for f in (HEADS_SAFETENSORS, HEADS_PT))
    return not heads_files and _vllm_config(path) is None


def _load_tensors(path: str) -> dict[str, torch.Tensor]:
    """The tensors of one ``.safetensors`` or torch file; CheckpointError naming it when it is truncated or corrupt."""
    try:
        if path.endswith(".safetensors"):
            return load_file(path)
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # safetensors, pickle and zip each raise their own types for a damaged file
        raise CheckpointError(f"{path} cannot be read: it is truncated or corrupt ({type(e).__name__}: {e}).") from None


def _read_full_model_heads(path: str) -> dict[str, torch.Tensor]:
    """The ``medusa_head.*`` tensors of a full-model checkpoint, prefix stripped, read shard by shard."""
    for index_name in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
        index_file = os.path.join(path, index_name)
        if os.path.isfile(index_file):
            weight_map = read_json(index_file)["weight_map"]
            shards = sorted({shard for key, shard in weight_map.items() if key.startswith(FULL_MODEL_PREFIX)})
            state = {}
            for shard in shards:
                state.update(_load_tensors(os.path.join(path, shard)))
            break
    else:
        weights = [os.path.join(path, f) for f in ("model.safetensors", "pytorch_model.bin")]
        weights = [f for f in weights if os.path.isfile(f)]
        if not weights:
            raise CheckpointError(
                f"No Medusa heads in {path!r}: expected {HEADS_SAFETENSORS}, {HEADS_PT}, or model weights "
                f"with '{FULL_MODEL_PREFIX}*' keys."
            )
        state = _load_tensors(weights[0])
    heads = {k[len(FULL_MODEL_PREFIX) :]: v for k, v in state.items() if k.startswith(FULL_MODEL_PREFIX)}
    if not heads:
        raise CheckpointError(f"The model weights in {path!r} hold no '{FULL_MODEL_PREFIX}*' keys: no Medusa heads.")
    return heads


def _read_vllm_heads(path: str, config: dict) -> dict[str, torch.Tensor]:
    """vLLM's ``blocks.{i}.layers.{j}.*`` / ``lm_heads.{i}.weight`` renamed to heads-only keys.

    With ``original_lm_head`` the single ``lm_heads.0.weight`` is the base model's lm_head ("version 2"
    heads use the base model's own), so it is dropped. Keys of no known form are kept as they are, for the
    strict load to name them.
    """
    weights = os.path.join(path, VLLM_WEIGHTS)
    if not os.path.isfile(weights):
        raise CheckpointError(f"No {VLLM_WEIGHTS} in {path!r}, which has a vLLM Medusa config.json.")
    layers = config.get("num_hidden_layers", 1)
    state = {}
    for key, tensor in _load_tensors(weights).items():
        match = _VLLM_KEY.match(key)
        if match is None:
            state[key] = tensor
        elif match.group(4) is None:
            state[f"{match.group(1)}.{match.group(2)}.linear.{match.group(3)}"] = tensor
        elif not config.get("original_lm_head"):
            state[f"{match.group(4)}.{layers}.weight"] = tensor
    return state


def read_heads_state_dict(path: str) -> dict[str, torch.Tensor]:
    """Head tensors of any supported layout, with heads-only key names ``{i}.{j}...``."""
    for name in (HEADS_SAFETENSORS, HEADS_PT):
        if os.path.isfile(os.path.join(path, name)):
            return _load_tensors(os.path.join(path, name))
    vllm_config = _vllm_config(path)
    if vllm_config is not None:
        return _read_vllm_heads(path, vllm_config)
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
