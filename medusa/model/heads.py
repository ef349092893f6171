"""Medusa heads (docs/design.md, Heads and checkpoint layouts).

Head k (0-based) maps the base model's last hidden state at position t to logits for the token at
t+k+2. A head is ``medusa_num_layers`` independent ResBlocks followed, for "own_lm_head" heads, by
its own ``Linear(d, vocab, bias=False)``. The module layout is chosen so that ``state_dict()`` keys
are exactly the FasterDecoding heads-only names: ``{i}.{j}.linear.weight|bias`` and ``{i}.{L}.weight``.
"""

import torch
from torch import nn


class ResBlock(nn.Module):
    """y = x + SiLU(W x + b); W and b start at zero so a fresh block is the identity."""

    def __init__(self, hidden_size: int):
        super().__init__()
        self.linear = nn.Linear(hidden_size, hidden_size)
        nn.init.zeros_(self.linear.weight)
        nn.init.zeros_(self.linear.bias)
        self.act = nn.SiLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.act(self.linear(x))


class MedusaHeads(nn.ModuleList):
    """All heads; ``forward(hidden, lm_head)`` gives logits ``[heads, *hidden.shape[:-1], vocab]``.

    Args:
        num_heads, num_layers: head count and ResBlocks per head.
        hidden_size, vocab_size: of the base model.
        shared_lm_head: "version 2" heads (no own lm_head; ``lm_head`` is passed at call time).
    """

    def __init__(self, num_heads: int, num_layers: int, hidden_size: int, vocab_size: int, shared_lm_head: bool):
        layers = lambda: [ResBlock(hidden_size) for _ in range(num_layers)]  # noqa: E731
        if shared_lm_head:
            heads = [nn.Sequential(*layers()) for _ in range(num_heads)]
        else:
            heads = [nn.Sequential(*layers(), nn.Linear(hidden_size, vocab_size, bias=False)) for _ in range(num_heads)]
        super().__init__(heads)
        self.shared_lm_head = shared_lm_head

    @torch.no_grad()
    def init_from_lm_head(self, lm_head: nn.Module) -> None:
        """Copy the base ``lm_head`` weight into each head's own lm_head (no-op for shared heads)."""
        if self.shared_lm_head:
            return
        for head in self:
            head[-1].weight.copy_(lm_head.weight)

    def forward(self, hidden: torch.Tensor, lm_head: nn.Module) -> torch.Tensor:
        """hidden ``[..., d]`` -> logits ``[heads, ..., vocab]``."""
        stacked = torch.stack([head(hidden) for head in self])
        # Shared: one product for all heads, so the vocabulary-sized weight is read once, not per head.
        return lm_head(stacked) if self.shared_lm_head else stacked
