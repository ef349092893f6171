"""The base model's sampling distribution and the choice of decoding mode (docs/sampling.md).

Every sampling path (the root token, typical acceptance, lossless acceptance and the tests'
reference) draws from :func:`sampling_probs`, so "the same temperature / top-k / top-p" means the
same distribution everywhere.
"""

import math

import torch

SAMPLING_MODES = ("greedy", "typical", "lossless")


def resolve_sampling(sampling: str | None, temperature: float, top_k: int = 0, top_p: float = 1.0) -> str:
    """Check the sampling arguments; ``None`` means greedy at temperature 0, lossless above it."""
    if not (math.isfinite(temperature) and temperature >= 0):  # NaN or inf would only fail later, inside softmax
        raise ValueError(f"temperature must be a finite number >= 0; got {temperature}.")
    if top_k < 0:
        raise ValueError(f"top_k must be >= 0 (0 = no top-k cut); got {top_k}.")
    if not 0 < top_p <= 1:
        raise ValueError(f"top_p must be in (0, 1]; got {top_p}.")
    if sampling is None:
        return "greedy" if temperature == 0 else "lossless"
    if sampling not in SAMPLING_MODES:
        raise ValueError(f"Unknown sampling {sampling!r}; choose one of {', '.join(SAMPLING_MODES)}.")
    if (sampling == "greedy") != (temperature == 0):
        raise ValueError(f"sampling={sampling!r} needs temperature {'0' if sampling == 'greedy' else '> 0'}; "
                         f"got temperature {temperature}.")
    return sampling


def sampling_probs(logits: torch.Tensor, temperature: float, top_k: int = 0, top_p: float = 1.0) -> torch.Tensor:
    """The distribution sampled from: softmax(logits / temperature), cut to top-k, then to the nucleus.

    Args:
        logits: ``[..., V]``; temperature > 0; top_k: keep the k most likely tokens (0: all; ties at
            the k-th logit are kept); top_p: keep the smallest set of most likely tokens whose mass
            reaches top_p (a token is kept if the mass of the tokens before it is below top_p).

    Returns:
        ``[..., V]`` float32 probabilities summing to 1.
    """
    logits = logits.float() / temperature
    if 0 < top_k < logits.shape[-1]:
        kth = logits.topk(top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, -torch.inf)
    probs = torch.softmax(logits, dim=-1)
    if top_p < 1:
        sorted_probs, order = probs.sort(dim=-1, descending=True)
        mass_before = sorted_probs.cumsum(-1) - sorted_probs
        sorted_probs = sorted_probs.masked_fill(mass_before >= top_p, 0)
        probs = torch.zeros_like(probs).scatter(-1, order, sorted_probs)
        probs = probs / probs.sum(-1, keepdim=True)
    return probs


def choose_root(logits: torch.Tensor, temperature: float, top_k: int = 0, top_p: float = 1.0,
                generator: torch.Generator | None = None) -> torch.Tensor:
    """The next token of each row from base logits ``[batch, V]``: argmax at temperature 0, else a sample. Returns ``[batch]``."""
    if temperature == 0:
        return logits.argmax(-1)
    return torch.multinomial(sampling_probs(logits, temperature, top_k, top_p), 1, generator=generator)[:, 0]
