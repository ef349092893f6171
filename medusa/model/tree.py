"""Static tree buffers for tree attention (DESIGN.md §3).

Paths are sorted by (length, lexicographic); node index = 1 + position in that order; node 0 is the
root (the token chosen from the base model's logits). ``T = len(paths) + 1`` tokens are verified
per step.
"""

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class TreeBuffers:
    """Everything a tree step needs, precomputed once per tree.

    Attributes:
        attn_mask: ``[T, T]`` bool; node i sees itself, the root and its ancestors.
        tree_indices: ``[T]`` long; where node i's token is read from the flat candidate vector
            ``[root, head0 top-k, head1 top-k, ...]`` (length ``1 + heads_used * top_k``).
        position_ids: ``[T]`` long; node depth (root 0, siblings share a position).
        retrieve_indices: ``[leaves, depth + 1]`` long; each root-to-leaf path as node indices,
            padded with 0 after its end.
        path_valid: ``[leaves, depth + 1]`` bool; False on the padding of ``retrieve_indices``.
        top_k: candidates taken from each head (max rank + 1).
        depth: longest path (heads used).
        children: node i's children in rank order (host-side, for the lossless tree walk).
        path_row: a row of ``retrieve_indices`` whose path runs through node i.
        key: the sorted paths as a tuple of tuples (identifies the tree).
    """

    attn_mask: torch.Tensor
    tree_indices: torch.Tensor
    position_ids: torch.Tensor
    retrieve_indices: torch.Tensor
    path_valid: torch.Tensor
    top_k: int
    depth: int
    children: tuple[tuple[int, ...], ...]
    path_row: tuple[int, ...]
    key: tuple

    @property
    def num_nodes(self) -> int:
        return self.tree_indices.shape[0]


def root_only_buffers(device: torch.device | str = "cpu") -> TreeBuffers:
    """The tree with no Medusa nodes: one token per step, i.e. plain greedy decoding."""
    true = torch.ones(1, 1, dtype=torch.bool, device=device)
    zero = torch.zeros(1, dtype=torch.long, device=device)
    return TreeBuffers(true, zero, zero, zero[None], true, top_k=0, depth=0, children=((),), path_row=(0,), key=())


def sort_paths(paths: list[list[int]]) -> list[list[int]]:
    return sorted((list(p) for p in paths), key=lambda p: (len(p), p))


def generate_medusa_buffers(paths: list[list[int]], device: torch.device | str = "cpu") -> TreeBuffers:
    """Build :class:`TreeBuffers` from a validated, prefix-closed list of paths."""
    paths = sort_paths(paths)
    num_nodes = len(paths) + 1
    top_k = max(max(p) for p in paths) + 1
    depth = max(len(p) for p in paths)
    index_of = {(): 0} | {tuple(p): i + 1 for i, p in enumerate(paths)}

    attn_mask = torch.eye(num_nodes, dtype=torch.bool)
    attn_mask[:, 0] = True
    tree_indices = torch.zeros(num_nodes, dtype=torch.long)
    position_ids = torch.zeros(num_nodes, dtype=torch.long)
    for path in paths:
        node = index_of[tuple(path)]
        for cut in range(1, len(path)):
            attn_mask[node, index_of[tuple(path[:cut])]] = True
        tree_indices[node] = 1 + (len(path) - 1) * top_k + path[-1]
        position_ids[node] = len(path)

    prefixes = {tuple(p[:cut]) for p in paths for cut in range(1, len(p))}
    leaves = [p for p in paths if tuple(p) not in prefixes]
    retrieve_indices = torch.zeros(len(leaves), depth + 1, dtype=torch.long)
    path_valid = torch.zeros(len(leaves), depth + 1, dtype=torch.bool)
    for row, leaf in enumerate(leaves):
        nodes = [0] + [index_of[tuple(leaf[:cut])] for cut in range(1, len(leaf) + 1)]
        retrieve_indices[row, : len(nodes)] = torch.tensor(nodes)
        path_valid[row, : len(nodes)] = True

    # Sorted paths list a node's children in rank order, and each node before its descendants.
    children = tuple(tuple(index_of[tuple(p)] for p in paths if p[:-1] == list(parent))
                     for parent in [[]] + paths)
    path_row = [0] * num_nodes
    for row, nodes in reversed(list(enumerate(retrieve_indices.tolist()))):
        for node in nodes:
            path_row[node] = row

    to = lambda t: t.to(device)  # noqa: E731
    return TreeBuffers(to(attn_mask), to(tree_indices), to(position_ids), to(retrieve_indices), to(path_valid), top_k,
                       depth, children, tuple(path_row), tuple(map(tuple, paths)))
