"""Grow a Medusa tree from measured head accuracies (docs/design.md, Trees and the tree policy).

With ``acc[d][r]`` the probability that head d's rank-r token is the right one, a node (path of
ranks) is accepted with probability ``prod_d acc[d][path[d]]`` (heads taken as independent), and the
expected number of accepted tokens of a tree is the sum of its nodes' probabilities. A child is never
more likely than its parent, so adding the most likely remaining node each time keeps the tree
prefix-closed and gives the best tree of every size.
"""

import heapq

import torch


def tree_capacity(heads: int, top_k: int) -> int:
    """Nodes of the full tree of ``heads`` levels with ``top_k`` children each (the most a tree can have)."""
    return sum(top_k**d for d in range(1, heads + 1))


def build_tree(accuracies: torch.Tensor | list[list[float]], num_nodes: int) -> list[list[int]]:
    """The ``num_nodes``-node tree with the largest expected acceptance.

    Args:
        accuracies: ``[heads, top_k]``; entry ``[d, r]`` = P(head d's rank-r prediction is correct).
        num_nodes: nodes besides the root (63 for the presets' 64-token verification).

    Returns:
        paths sorted by (length, ranks), as ``medusa_choices``.
    """
    acc = torch.as_tensor(accuracies, dtype=torch.float64)
    if acc.ndim != 2 or acc.numel() == 0:
        raise ValueError(f"accuracies must be [heads, top_k], got shape {tuple(acc.shape)}.")
    heads, top_k = acc.shape
    capacity = tree_capacity(heads, top_k)
    if not 1 <= num_nodes <= capacity:
        raise ValueError(f"num_nodes must be in [1, {capacity}] for {heads} heads and top-{top_k}, got {num_nodes}.")
    frontier = [(-acc[0, r].item(), (r,)) for r in range(top_k)]
    heapq.heapify(frontier)
    tree = []
    while len(tree) < num_nodes:
        neg_value, path = heapq.heappop(frontier)
        tree.append(list(path))
        if len(path) < heads:
            for r in range(top_k):
                heapq.heappush(frontier, (neg_value * acc[len(path), r].item(), path + (r,)))
    return sorted(tree, key=lambda p: (len(p), p))


def expected_tokens_per_step(accuracies: torch.Tensor | list[list[float]], tree: list[list[int]]) -> float:
    """1 (the base model's own token) + the sum over nodes of their acceptance probability."""
    acc = torch.as_tensor(accuracies, dtype=torch.float64)
    return 1.0 + sum(torch.prod(acc[torch.arange(len(p)), torch.tensor(p)]).item() for p in tree)
