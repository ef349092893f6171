"""Candidate generation: the tree's tokens from the base logits and the heads' top-k (DESIGN.md §3)."""

import torch

from .tree import TreeBuffers


def generate_candidates(root: torch.Tensor, head_logits: torch.Tensor, buffers: TreeBuffers) -> tuple[torch.Tensor, torch.Tensor]:
    """Fill each row's tree with tokens.

    Args:
        root: ``[batch]`` the token that follows each row's accepted sequence.
        head_logits: ``[batch, heads, V]`` the heads' logits at each row's last accepted position
            (unused for a root-only tree).
        buffers: the tree.

    Returns:
        tree_candidates ``[batch, T]`` (one token per node, node order) and candidates
        ``[batch, leaves, depth + 1]`` (each root-to-leaf path's tokens; padding repeats the root).
    """
    flat = root[:, None]
    if buffers.depth:
        top = head_logits[:, : buffers.depth].topk(buffers.top_k, dim=-1).indices  # [batch, depth, top_k]
        flat = torch.cat([flat, top.flatten(1)], dim=1)
    tree_candidates = flat[:, buffers.tree_indices]
    return tree_candidates, tree_candidates[:, buffers.retrieve_indices]
