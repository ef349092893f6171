"""Tree presets (``medusa_choices``) and their validation (docs/design.md, Trees and the tree policy).

A tree is a list of paths; element j of a path is a top-k rank of head j: ``[0, 1]`` is head 0's
top-1 followed by head 1's top-2. The presets are the reference's, 63 nodes each.
"""

import json
import os
from importlib import resources

from .checkpoint import read_json

DEFAULT_TREE = "mc_sim_7b_63"
MAX_TOP_K = 10


def presets() -> dict[str, list[list[int]]]:
    """All named presets, name -> list of paths."""
    with resources.files(__package__).joinpath("medusa_trees.json").open() as f:
        return json.load(f)


def validate_medusa_choices(choices, num_heads: int, top_k: int = MAX_TOP_K) -> list[list[int]]:
    """Check a tree and return it as a list of lists of ints, or raise ValueError saying what is wrong.

    Rules: non-empty; each path a non-empty list of non-negative ints below ``top_k``; no
    duplicates; every prefix of a path present (prefix-closed); depth at most ``num_heads``.
    """
    if not isinstance(choices, (list, tuple)) or not choices:
        raise ValueError("medusa_choices must be a non-empty list of paths such as [[0], [0, 0], [1]].")
    tree = []
    for path in choices:
        if not isinstance(path, (list, tuple)) or not path or not all(isinstance(r, int) and not isinstance(r, bool) for r in path):
            raise ValueError(f"Tree path {path!r} is not a non-empty list of integer ranks.")
        if any(r < 0 or r >= top_k for r in path):
            raise ValueError(f"Tree path {list(path)} has a rank outside [0, {top_k}).")
        if len(path) > num_heads:
            raise ValueError(f"Tree path {list(path)} has depth {len(path)} but the model has only {num_heads} Medusa heads.")
        tree.append(list(path))
    as_tuples = {tuple(p) for p in tree}
    if len(as_tuples) != len(tree):
        raise ValueError("medusa_choices contains duplicate paths.")
    for path in tree:
        if len(path) > 1 and tuple(path[:-1]) not in as_tuples:
            raise ValueError(f"Tree path {path} is missing its parent {path[:-1]}: every prefix of a path must be present.")
    return tree


def resolve_medusa_choices(choices, num_heads: int) -> list[list[int]]:
    """A validated tree from a preset name, a JSON string, a path to a JSON file, or a list of paths.

    ``None`` gives the default preset with paths deeper than ``num_heads`` dropped (the presets are
    4 deep; a model with fewer heads still gets a valid tree). An explicit tree is never pruned.
    """
    if choices is None:
        tree = [p for p in presets()[DEFAULT_TREE] if len(p) <= num_heads]
        return validate_medusa_choices(tree, num_heads)
    if isinstance(choices, str):
        named = presets()
        if choices in named:
            choices = named[choices]
        elif os.path.isfile(choices):
            choices = read_json(choices)
        else:
            try:
                choices = json.loads(choices)
            except json.JSONDecodeError:
                raise ValueError(
                    f"medusa_choices {choices!r} is neither a preset ({', '.join(sorted(named))}), "
                    "a JSON file nor a JSON list of paths."
                ) from None
    return validate_medusa_choices(choices, num_heads)
