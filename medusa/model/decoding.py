"""How each step accepts tokens: the decoding settings, validated once and passed down to every step."""

import math
from dataclasses import dataclass

import torch

from .posterior import POSTERIOR_ALPHA, POSTERIOR_THRESHOLD
from .sampling import resolve_sampling


@dataclass(frozen=True)
class DecodingConfig:
    """Sampling and acceptance settings of one generation (docs/sampling.md).

    Args:
        temperature: 0 for greedy decoding; above 0, sampling at this temperature.
        sampling: ``"greedy"``, ``"lossless"`` or ``"typical"``; None: greedy at temperature 0, else
            lossless. Resolved on construction, so the attribute always names the mode.
        top_k, top_p: cuts of the sampling distribution (0 and 1: none).
        posterior_threshold, posterior_alpha: typical acceptance's epsilon and alpha.
        generator: all randomness of sampling (on the model's device).
        fold_gqa: attend with :func:`~medusa.model.attention.grouped_sdpa_attention`.
    """

    temperature: float = 0.0
    sampling: str | None = None
    top_k: int = 0
    top_p: float = 1.0
    posterior_threshold: float = POSTERIOR_THRESHOLD
    posterior_alpha: float = POSTERIOR_ALPHA
    generator: torch.Generator | None = None
    fold_gqa: bool = False

    def __post_init__(self):
        object.__setattr__(self, "sampling", resolve_sampling(self.sampling, self.temperature, self.top_k, self.top_p))
        for name in ("posterior_threshold", "posterior_alpha"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be a finite number > 0; got {value!r}.")
