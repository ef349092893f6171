"""Pick the tree for each batch size from head accuracies and a measured verify-cost curve.

See docs/design.md, "Trees and the tree policy".

A tree of T tokens (root included) yields ``expected_tokens_per_step`` tokens per step but makes the
step cost ``time(b, T)`` instead of ``time(b, 1)``; the speedup over plain decoding at batch size b is

    speedup(b, T) = expected_tokens(T) * time(b, 1) / time(b, T)

Larger batches make verification compute-bound sooner, so the best T shrinks as b grows, and at
some batch size no tree pays for itself (the policy then answers ``"none"``: plain decoding).

    model.tree_policy = TreePolicy.load("acc.json", "cost.json")  # heads_accuracy --output, verify_cost --output
"""

import bisect
import json
import math

import torch

from .tree_builder import build_tree, expected_tokens_per_step, tree_capacity
from .medusa_choices import MAX_TOP_K

# Beside the heads, these two files give the model a tree policy (``model.tree_policy``) on loading.
POLICY_FILES = ("heads_accuracy.json", "verify_cost.json")  # heads_accuracy --output, verify_cost --output


class CostCurve:
    """Measured time of one decode step, in milliseconds, per batch size and tree size.

    JSON: ``{"device": str, "model": str, "dtype": str, "batch_sizes": [...], "tree_sizes": [...],
    "ms": [[ms per tree size] per batch size]}`` (``python -m medusa.eval.verify_cost`` writes it).

    Args:
        batch_sizes: rows per step, strictly increasing positive ints.
        tree_sizes: tokens verified per row (root included), strictly increasing, starting at 1
            (plain decoding: the baseline every speedup is relative to).
        ms: ``[len(batch_sizes)][len(tree_sizes)]`` positive step times in ms.
        device, model, dtype: where and what was measured (for the record only).
    """

    def __init__(self, batch_sizes: list[int], tree_sizes: list[int], ms: list[list[float]],
                 device: str = "", model: str = "", dtype: str = ""):
        for name, sizes in (("batch_sizes", batch_sizes), ("tree_sizes", tree_sizes)):
            if (not isinstance(sizes, list) or not sizes
                    or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 1 for s in sizes)):
                raise ValueError(f"{name} must be a non-empty list of positive integers, got {sizes!r}.")
            if any(a >= b for a, b in zip(sizes, sizes[1:])):
                raise ValueError(f"{name} must be strictly increasing, got {sizes}.")
        if tree_sizes[0] != 1:
            raise ValueError(f"tree_sizes must start at 1 (plain decoding, the baseline), got {tree_sizes}.")
        if not isinstance(ms, list) or len(ms) != len(batch_sizes) or any(
                not isinstance(row, list) or len(row) != len(tree_sizes) for row in ms):
            raise ValueError(f"ms must be {len(batch_sizes)} rows (one per batch size) of {len(tree_sizes)} times "
                             "(one per tree size).")
        for b, row in zip(batch_sizes, ms):
            for t, value in zip(tree_sizes, row):
                number = isinstance(value, (int, float)) and not isinstance(value, bool)
                if not number or not math.isfinite(value) or value <= 0:
                    raise ValueError(f"ms at batch size {b}, tree size {t} must be a positive number, got {value!r}.")
        self.batch_sizes, self.tree_sizes = list(batch_sizes), list(tree_sizes)
        self.ms = [[float(v) for v in row] for row in ms]
        self.device, self.model, self.dtype = device, model, dtype

    @classmethod
    def load(cls, path: str) -> "CostCurve":
        """Read a curve written by :meth:`save`; ValueError naming the file if it is malformed."""
        with open(path) as f:
            try:
                data = json.load(f)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}: not JSON ({e}).") from None
        if not isinstance(data, dict) or not {"batch_sizes", "tree_sizes", "ms"} <= data.keys():
            raise ValueError(f"{path}: a cost curve is a JSON object with batch_sizes, tree_sizes and ms.")
        try:
            return cls(data["batch_sizes"], data["tree_sizes"], data["ms"], **{
                k: str(data.get(k, "")) for k in ("device", "model", "dtype")})
        except ValueError as e:
            raise ValueError(f"{path}: {e}") from None

    def save(self, path: str) -> None:
        with open(path, "w") as f:
            json.dump({"device": self.device, "model": self.model, "dtype": self.dtype, "batch_sizes": self.batch_sizes,
                       "tree_sizes": self.tree_sizes, "ms": self.ms}, f, indent=1)

    def time(self, batch_size: int, tree_size: int) -> float:
        """Step time in ms at ``batch_size`` rows of ``tree_size`` tokens.

        Piecewise-linear in tree size between measured sizes (ValueError outside them: a bigger tree
        was not measured). In batch size: linear between measured sizes, the smallest measured batch
        below it (an over-estimate: fewer rows never cost more), and beyond the largest one
        proportional to the batch size (a conservative guess: no better parallelism than measured).
        """
        if not self.tree_sizes[0] <= tree_size <= self.tree_sizes[-1]:
            raise ValueError(f"tree size {tree_size} is outside the measured "
                             f"{self.tree_sizes[0]}..{self.tree_sizes[-1]}.")
        at = [_interpolate(self.tree_sizes, row, tree_size) for row in self.ms]  # [len(batch_sizes)]
        if batch_size >= self.batch_sizes[-1]:
            return at[-1] * batch_size / self.batch_sizes[-1]
        return _interpolate(self.batch_sizes, at, max(batch_size, self.batch_sizes[0]))


def _interpolate(xs: list[int], ys: list[float], x: float) -> float:
    """Piecewise-linear ``y(x)`` through the points ``(xs[i], ys[i])``, ``xs`` sorted, ``xs[0] <= x <= xs[-1]``."""
    i = min(bisect.bisect_right(xs, x), len(xs) - 1)  # xs[i - 1] <= x <= xs[i]
    if i == 0 or xs[i - 1] == x:
        return ys[max(i - 1, 0)]
    w = (x - xs[i - 1]) / (xs[i] - xs[i - 1])
    return ys[i - 1] + w * (ys[i] - ys[i - 1])


class TreePolicy:
    """The tree with the largest expected speedup at each batch size (``model.tree_policy``).

    Candidate tree sizes are the curve's measured tree sizes above 1 that the accuracies can fill
    (T - 1 nodes at most the tree builder's capacity). Sizes between measurements are not
    considered: real step time rises in steps (kernel tiles), which linear interpolation would
    under-estimate; measure the sizes you want considered.

    Args:
        accuracies: ``[heads, top_k]`` head accuracies as in :func:`~medusa.model.tree_builder.build_tree`
            (ranks beyond the trees' limit of 10 are dropped).
        cost: the measured step times.
    """

    def __init__(self, accuracies: torch.Tensor | list[list[float]], cost: CostCurve):
        acc = torch.as_tensor(accuracies, dtype=torch.float64)
        if acc.ndim != 2 or acc.numel() == 0:
            raise ValueError(f"accuracies must be [heads, top_k], got shape {tuple(acc.shape)}.")
        if not ((acc >= 0) & (acc <= 1)).all():  # NaN fails too
            raise ValueError("accuracies must be probabilities in [0, 1].")
        self.accuracies = acc[:, :MAX_TOP_K]
        self.cost = cost
        self.candidate_sizes = [t for t in cost.tree_sizes if 2 <= t <= tree_capacity(*self.accuracies.shape) + 1]
        # Trees and their expected tokens do not depend on the batch size: grow each candidate once.
        self._trees = {t: build_tree(self.accuracies, t - 1) for t in self.candidate_sizes}
        self._tokens = {t: expected_tokens_per_step(self.accuracies, tree) for t, tree in self._trees.items()}
        self._chosen: dict[int, tuple[list[list[int]] | str, float]] = {}

    @classmethod
    def load(cls, accuracies_path: str, cost_path: str) -> "TreePolicy":
        """From ``heads_accuracy --output`` JSON (its ``accuracy`` field) and a :class:`CostCurve` file."""
        with open(accuracies_path) as f:
            try:
                data = json.load(f)
            except json.JSONDecodeError as e:
                raise ValueError(f"{accuracies_path}: not JSON ({e}).") from None
        if not isinstance(data, dict) or "accuracy" not in data:
            raise ValueError(f"{accuracies_path}: expected the JSON of `python -m medusa.eval.heads_accuracy --output` "
                             "(an object with an 'accuracy' field, [heads][top_k]).")
        cost = CostCurve.load(cost_path)
        try:
            return cls(data["accuracy"], cost)
        except ValueError as e:
            raise ValueError(f"{accuracies_path}: {e}") from None

    def save(self, accuracies_path: str, cost_path: str) -> None:
        """Write the two files :meth:`load` reads (the accuracies as ``{"accuracy": [[...]]}``)."""
        with open(accuracies_path, "w") as f:
            json.dump({"accuracy": self.accuracies.tolist()}, f)
        self.cost.save(cost_path)

    def speedup(self, batch_size: int, tree_size: int) -> float:
        """Expected speedup over plain decoding of the ``tree_size``-token tree at ``batch_size`` rows."""
        tokens = self._tokens[tree_size] if tree_size > 1 else 1.0
        return tokens * self.cost.time(batch_size, 1) / self.cost.time(batch_size, tree_size)

    def expected_speedup(self, batch_size: int) -> tuple[list[list[int]] | str, float]:
        """(tree, speedup): the best candidate's paths, or ``("none", 1.0)`` when no tree beats plain decoding."""
        if batch_size not in self._chosen:
            best, best_speedup = "none", 1.0
            for t in self.candidate_sizes:  # increasing: on a tie the smaller tree wins
                s = self.speedup(batch_size, t)
                if s > best_speedup:
                    best, best_speedup = self._trees[t], s
            self._chosen[batch_size] = (best, best_speedup)
        return self._chosen[batch_size]

    def choices(self, batch_size: int) -> list[list[int]] | str:
        """``medusa_choices`` for a step of ``batch_size`` rows (what ``medusa_generate`` asks for)."""
        return self.expected_speedup(batch_size)[0]
