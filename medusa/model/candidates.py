"""Candidate generation: the tree's tokens from the base logits and the heads' top-k (DESIGN.md §3)."""

import torch

from .tree import TreeBuffers


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
