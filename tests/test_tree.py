"""Tree presets, validation and buffers against a brute-force construction from the paths."""

import json
import random

import pytest
import torch

from medusa.model import generate_medusa_buffers, presets, resolve_medusa_choices, validate_medusa_choices


def random_tree(rng: random.Random, num_nodes: int, max_depth: int, top_k: int) -> list[list[int]]:
    """A random prefix-closed tree grown node by node (at most as many nodes as the shape allows)."""
    num_nodes = min(num_nodes, sum(top_k**d for d in range(1, max_depth + 1)))
    tree = {()}
    while len(tree) < num_nodes + 1:
        parent = rng.choice(sorted(tree))
        if len(parent) < max_depth:
            tree.add(parent + (rng.randrange(top_k),))
    return [list(p) for p in tree if p]


def brute_force(paths):
    """Per node (by sorted order): visible node set, depth, flat index; the set of root-to-leaf paths."""
    order = sorted(map(tuple, paths), key=lambda p: (len(p), p))
    nodes = [()] + order
    top_k = max(max(p) for p in order) + 1
    visible = [{j for j, other in enumerate(nodes) if node[: len(other)] == other} for node in nodes]
    depth = [len(node) for node in nodes]
    flat = [0] + [1 + (len(p) - 1) * top_k + p[-1] for p in order]
    leaves = [p for p in order if not any(len(q) > len(p) and q[: len(p)] == p for q in order)]
    leaf_paths = {tuple(nodes.index(leaf[:cut]) for cut in range(len(leaf) + 1)) for leaf in leaves}
    return visible, depth, flat, leaf_paths


def check_buffers(paths):
    buffers = generate_medusa_buffers(paths)
    visible, depth, flat, leaf_paths = brute_force(paths)
    n = len(paths) + 1
    assert buffers.num_nodes == n
    for i in range(n):
        assert set(torch.nonzero(buffers.attn_mask[i]).flatten().tolist()) == visible[i]
    assert buffers.position_ids.tolist() == depth
    assert buffers.tree_indices.tolist() == flat
    rows = set()
    for row, valid in zip(buffers.retrieve_indices.tolist(), buffers.path_valid.tolist()):
        assert valid == sorted(valid, reverse=True), "padding only at the end"
        rows.add(tuple(r for r, v in zip(row, valid) if v))
    assert rows == leaf_paths
    assert buffers.depth == max(depth)


@pytest.mark.parametrize("name", sorted(presets()))
def test_preset_buffers_match_brute_force(name):
    tree = presets()[name]
    assert len(tree) == 63
    check_buffers(tree)


@pytest.mark.parametrize("seed", range(20))
def test_random_tree_buffers_match_brute_force(seed):
    rng = random.Random(seed)
    check_buffers(random_tree(rng, rng.randint(1, 40), rng.randint(1, 5), rng.randint(1, 10)))


def test_chain_tree_buffers():
    buffers = generate_medusa_buffers([[0], [0, 0], [0, 0, 0]])
    assert buffers.attn_mask.equal(torch.ones(4, 4, dtype=torch.bool).tril())
    assert buffers.retrieve_indices.tolist() == [[0, 1, 2, 3]]
    assert buffers.tree_indices.tolist() == [0, 1, 2, 3]  # top_k = 1


@pytest.mark.parametrize(
    "tree, heads, message",
    [
        ([], 4, "non-empty"),
        ([[0], [0, 1, 2]], 4, "missing its parent [0, 1]"),
        ([[0], [10]], 4, "rank outside [0, 10)"),
        ([[0], [-1]], 4, "rank outside"),
        ([[0], [0, 0], [0, 0, 0]], 2, "depth 3 but the model has only 2"),
        ([[0], [0]], 4, "duplicate"),
        ([[0], []], 4, "non-empty list of integer ranks"),
        ([[0], [0.5]], 4, "integer ranks"),
        ("[[0], [0, 1]", 4, "neither a preset"),
        ("no_such_tree", 4, "neither a preset"),
    ],
)
def test_invalid_trees_are_refused_with_the_reason(tree, heads, message):
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]").replace("(", r"\(").replace(")", r"\)")):
        resolve_medusa_choices(tree, heads)


def test_resolve_by_name_json_file_and_default(tmp_path):
    assert resolve_medusa_choices("zephyr_stage2", 5) == presets()["zephyr_stage2"]
    assert resolve_medusa_choices("[[0], [1], [0, 0]]", 2) == [[0], [1], [0, 0]]
    path = tmp_path / "tree.json"
    path.write_text(json.dumps([[0], [0, 3]]))
    assert resolve_medusa_choices(str(path), 2) == [[0], [0, 3]]
    default = presets()["mc_sim_7b_63"]
    assert resolve_medusa_choices(None, 4) == default
    pruned = resolve_medusa_choices(None, 2)
    assert pruned == [p for p in default if len(p) <= 2] and len(pruned) < 63
    with pytest.raises(ValueError, match="depth 4"):
        validate_medusa_choices(default, 3)
