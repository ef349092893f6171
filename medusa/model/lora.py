"""Merging a LoRA adapter (peft's saved layout) into a base model's weights, without peft.

A Medusa-2 checkpoint keeps the fine-tuned backbone as a LoRA adapter beside its heads; loading folds it
into the base model once, so decoding runs the plain merged weights (no adapter kernels per step):

    W ← W + s · B A,   A: [r, in], B: [out, r],   s = lora_alpha / r   (lora_alpha / √r with rsLoRA)

Only plain LoRA on ``nn.Linear`` modules is supported; anything else in the adapter's config (DoRA,
per-module rank patterns, trained biases, extra saved modules) is refused with its name, never ignored.
"""

import json
import math
import os
from dataclasses import dataclass

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from .checkpoint import CheckpointError, read_json

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
_PEFT_PREFIX = "base_model.model."  # PeftModelForCausalLM -> LoraModel -> the Hugging Face model
_LORA_SUFFIXES = (".lora_A.weight", ".lora_B.weight")
# adapter_config.json fields that change what the adapter computes; each must be off (falsy) here.
_UNSUPPORTED = ("use_dora", "fan_in_fan_out", "modules_to_save", "rank_pattern", "alpha_pattern", "lora_bias",
                "layer_replication", "use_qalora", "target_parameters", "trainable_token_indices")


def is_adapter(path: str) -> bool:
    return os.path.isfile(os.path.join(path, ADAPTER_CONFIG))


@dataclass(frozen=True)
class LoraAdapter:
    """A LoRA adapter as peft saves it: ``config`` (adapter_config.json) and ``state`` (its tensors)."""

    config: dict
    state: dict[str, torch.Tensor]
    source: str  # where it was read from, for messages

    @classmethod
    def load(cls, path: str) -> "LoraAdapter":
        """Reads and checks the adapter in folder ``path``; CheckpointError naming the file on any problem."""
        config_file = os.path.join(path, ADAPTER_CONFIG)
        config = read_json(config_file)
        peft_type = config.get("peft_type") if isinstance(config, dict) else None
        if peft_type != "LORA":
            raise CheckpointError(f"{config_file} is not a LoRA adapter config (peft_type {peft_type!r}).")
        if config.get("bias", "none") != "none":
            raise CheckpointError(f"{config_file}: bias={config['bias']!r} is not supported (only 'none').")
        for field in _UNSUPPORTED:
            if config.get(field):
                raise CheckpointError(f"{config_file}: {field}={config[field]!r} is not supported by the LoRA merge.")
        weights_file = os.path.join(path, ADAPTER_WEIGHTS)
        try:
            state = load_file(weights_file)
        except Exception as e:  # missing, truncated or corrupt: safetensors raises several types
            raise CheckpointError(f"{weights_file} cannot be read ({type(e).__name__}: {e}).") from None
        adapter = cls(config, state, weights_file)
        adapter.modules()  # checks keys and shapes now, not at the merge
        return adapter

    def save(self, path: str) -> None:
        os.makedirs(path, exist_ok=True)
        with open(os.path.join(path, ADAPTER_CONFIG), "w") as f:
            json.dump(self.config, f, indent=2)
        save_file(self.state, os.path.join(path, ADAPTER_WEIGHTS), metadata={"format": "pt"})

    @property
    def scale(self) -> float:
        r = self.config["r"]
        return self.config["lora_alpha"] / (math.sqrt(r) if self.config.get("use_rslora") else r)

    def modules(self) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """``{module name in the base model: (A [r, in], B [out, r])}``."""
        pairs: dict[str, dict[str, torch.Tensor]] = {}
        for key, tensor in self.state.items():
            suffix = next((s for s in _LORA_SUFFIXES if key.endswith(s)), None)
            if suffix is None or not key.startswith(_PEFT_PREFIX):
                raise CheckpointError(f"{self.source}: unexpected key {key!r} (not a LoRA A/B weight).")
            pairs.setdefault(key[len(_PEFT_PREFIX):-len(suffix)], {})[suffix] = tensor
        if not pairs:
            raise CheckpointError(f"{self.source} holds no LoRA weights.")
        r, modules = self.config["r"], {}
        for name, pair in sorted(pairs.items()):
            if len(pair) != 2:
                raise CheckpointError(f"{self.source}: {name} has {next(iter(pair))[1:7]} but not its pair.")
            a, b = pair[".lora_A.weight"], pair[".lora_B.weight"]
            if a.dim() != 2 or b.dim() != 2 or a.shape[0] != r or b.shape[1] != r:
                raise CheckpointError(f"{self.source}: {name} has A {tuple(a.shape)} and B {tuple(b.shape)}, not rank {r}.")
            modules[name] = (a, b)
        return modules

    @torch.no_grad()
    def merge_into(self, model: nn.Module) -> None:
        """Adds ``s · B A`` to each targeted Linear weight of ``model``, in place.

        The product is formed in fp32 and rounded once into each weight's own dtype. Strict: every adapter
        module must be a plain (unquantised) ``nn.Linear`` of ``model`` with matching shapes.
        """
        for name, (a, b) in self.modules().items():
            try:
                linear = model.get_submodule(name)
            except AttributeError:
                raise CheckpointError(f"{self.source} targets {name!r}, which the base model does not have.") from None
            weight = getattr(linear, "weight", None)
            if type(linear) is not nn.Linear or not weight.is_floating_point():
                raise CheckpointError(f"{self.source} targets {name!r}, a {type(linear).__name__} with "
                                      f"{getattr(weight, 'dtype', None)} weights: LoRA merges only into plain Linear layers.")
            if weight.shape != (b.shape[0], a.shape[1]):
                raise CheckpointError(f"{self.source} has {name} of shape {(b.shape[0], a.shape[1])}; the base "
                                      f"model's weight is {tuple(weight.shape)}.")
            delta = b.to(weight.device, torch.float32) @ a.to(weight.device, torch.float32)
            weight.copy_((weight.float() + self.scale * delta).to(weight.dtype))
