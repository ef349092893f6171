"""Static tree buffers for tree attention.

Head paths are sorted by (length, lexicographic); node index = 1 + position in that order; node 0 is
the root (the token chosen from the base model's logits). After the head nodes come the copy chains
(prompt lookup): ``copy_chains`` linear branches of ``copy_depth`` nodes each, hanging from the root,
whose tokens are copied from earlier text (:func:`~medusa.model.candidates.copy_candidates`).
``T = len(paths) + copy_chains * copy_depth + 1`` tokens are verified per step.
"""

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class TreeBuffers:
    """Everything a tree step needs, precomputed once per tree.

    Attributes:
        attn_mask: ``[T, T]`` bool; node i sees itself, the root and its ancestors.
        tree_indices: ``[T]`` long; where node i's token is read from the flat candidate vector
            ``[root, head0 top-k, head1 top-k, ..., chain 0 tokens, chain 1 tokens, ...]`` (length
            ``1 + head_depth * top_k + copy_chains * copy_depth``).
        position_ids: ``[T]`` long; node depth (root 0, siblings share a position).
        retrieve_indices: ``[leaves, depth + 1]`` long; each root-to-leaf path as node indices,
            padded with 0 after its end (head leaves first, then one row per copy chain).
        path_valid: ``[leaves, depth + 1]`` bool; False on the padding of ``retrieve_indices``.
        top_k: candidates taken from each head (max rank + 1).
        head_depth: longest head path (heads used).
        copy_chains, copy_depth: the copy branches' number and length.
        children: node i's children in rank order, copy chains last (host-side, for the lossless walk).
        path_row: a row of ``retrieve_indices`` whose path runs through node i.
        key: identifies the tree: the sorted head paths as a tuple of tuples, and the copy branches'
            shape when there are any.
    """

    attn_mask: torch.Tensor
    tree_indices: torch.Tensor
    position_ids: torch.Tensor
    retrieve_indices: torch.Tensor
    path_valid: torch.Tensor
    top_k: int
    head_depth: int
    copy_chains: int
    copy_depth: int
    children: tuple[tuple[int, ...], ...]
    path_row: tuple[int, ...]
    key: tuple

    @property
    def num_nodes(self) -> int:
        return self.tree_indices.shape[0]

    @property
    def depth(self) -> int:
        """Longest root-to-leaf path (accepted tokens per step at most)."""
        return self.retrieve_indices.shape[1] - 1


def sort_paths(paths: list[list[int]]) -> list[list[int]]:
    return sorted((list(p) for p in paths), key=lambda p: (len(p), p))


def generate_medusa_buffers(paths: list[list[int]], device: torch.device | str = "cpu", copy_chains: int = 0,
                            copy_depth: int = 0) -> TreeBuffers:
    """Build :class:`TreeBuffers` from a validated, prefix-closed list of head paths (may be empty) and the
    copy branches' shape. No paths and no chains: the root-only tree, i.e. plain decoding."""
    if (copy_chains > 0) != (copy_depth > 0) or copy_chains < 0 or copy_depth < 0:
        raise ValueError(f"copy_chains and copy_depth must both be positive or both 0; got {copy_chains}, {copy_depth}.")
    paths = sort_paths(paths)
    top_k = max((max(p) for p in paths), default=-1) + 1
    head_depth = max((len(p) for p in paths), default=0)
    # A copy chain is a path of its own kind: ("copy", c, j) is node j (1-based) of chain c.
    chains = [[("copy", c, j) for j in range(1, copy_depth + 1)] for c in range(copy_chains)]
    nodes = [tuple(p) for p in paths] + [tuple(chain[:j]) for chain in chains for j in range(1, copy_depth + 1)]
    num_nodes = len(nodes) + 1
    index_of = {(): 0} | {node: i + 1 for i, node in enumerate(nodes)}
    flat_copy = 1 + head_depth * top_k  # where the chains' tokens start in the flat candidate vector

    attn_mask = torch.eye(num_nodes, dtype=torch.bool)
    attn_mask[:, 0] = True
    tree_indices = torch.zeros(num_nodes, dtype=torch.long)
    position_ids = torch.zeros(num_nodes, dtype=torch.long)
    for node in nodes:
        i = index_of[node]
        for cut in range(1, len(node)):
            attn_mask[i, index_of[node[:cut]]] = True
        last = node[-1]
        tree_indices[i] = flat_copy + last[1] * copy_depth + last[2] - 1 if isinstance(last, tuple) else \
            1 + (len(node) - 1) * top_k + last
        position_ids[i] = len(node)

    prefixes = {node[:cut] for node in nodes for cut in range(1, len(node))}
    leaves = [node for node in nodes if node not in prefixes] or [()]
    depth = max(len(leaf) for leaf in leaves)
    retrieve_indices = torch.zeros(len(leaves), depth + 1, dtype=torch.long)
    path_valid = torch.zeros(len(leaves), depth + 1, dtype=torch.bool)
    for row, leaf in enumerate(leaves):
        path = [index_of[leaf[:cut]] for cut in range(len(leaf) + 1)]
        retrieve_indices[row, : len(path)] = torch.tensor(path)
        path_valid[row, : len(path)] = True

    # Sorted paths list a node's children in rank order, and each node before its descendants.
    children = tuple(tuple(index_of[node] for node in nodes if node[:-1] == parent) for parent in [()] + nodes)
    path_row = [0] * num_nodes
    for row, path in reversed(list(enumerate(retrieve_indices.tolist()))):
        for node in path:
            path_row[node] = row

    key = tuple(map(tuple, paths)) + ((("copy", copy_chains, copy_depth),) if copy_chains else ())
    to = lambda t: t.to(device)  # noqa: E731
    return TreeBuffers(to(attn_mask), to(tree_indices), to(position_ids), to(retrieve_indices), to(path_valid), top_k,
                       head_depth, copy_chains, copy_depth, children, tuple(path_row), key)
