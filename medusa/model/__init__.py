"""Inference core: config, heads, checkpoints, trees, KV cache and the decode loop."""

from .checkpoint import CheckpointError
from .config import MedusaConfig
from .heads import MedusaHeads, ResBlock
from .kv_cache import CacheCapacityError, MedusaKVCache
from .medusa_choices import presets, resolve_medusa_choices, validate_medusa_choices
from .medusa_model import MedusaModel
from .tree import TreeBuffers, generate_medusa_buffers
from .tree_policy import CostCurve, TreePolicy

__all__ = [
    "CacheCapacityError",
    "CheckpointError",
    "CostCurve",
    "MedusaConfig",
    "MedusaHeads",
    "MedusaKVCache",
    "MedusaModel",
    "ResBlock",
    "TreeBuffers",
    "TreePolicy",
    "generate_medusa_buffers",
    "presets",
    "resolve_medusa_choices",
    "validate_medusa_choices",
]
