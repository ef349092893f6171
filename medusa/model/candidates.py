"""Candidate generation: the tree's tokens from the base logits and the heads' top-k (DESIGN.md §3)."""

import torch

from .tree import TreeBuffers


def choose_root(logits: torch.Tensor, temperature: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """The next token from base logits ``[V]``: argmax at temperature 0, else a sample. Returns ``[1]``."""
    if temperature == 0:
        return logits.argmax(-1, keepdim=True)
    probs = torch.softmax(logits.float() / temperature, dim=-1)
    return torch.multinomial(probs, 1, generator=generator)


def generate_candidates(root: torch.Tensor, head_logits: torch.Tensor, buffers: TreeBuffers) -> tuple[torch.Tensor, torch.Tensor]:
    """Fill the tree with tokens.

    Args:
        root: ``[1]`` the token that follows the accepted sequence.
        head_logits: ``[heads, V]`` the heads' logits at the last accepted position (unused for a
            root-only tree).
        buffers: the tree.

    Returns:
        tree_candidates ``[T]`` (one token per node, node order) and candidates
        ``[leaves, depth + 1]`` (each root-to-leaf path's tokens; padding repeats the root).
    """
    flat = root
    if buffers.depth:
        top = head_logits[: buffers.depth].topk(buffers.top_k, dim=-1).indices  # [depth, top_k]
        flat = torch.cat([root, top.flatten()])
    tree_candidates = flat[buffers.tree_indices]
    return tree_candidates, tree_candidates[buffers.retrieve_indices]
