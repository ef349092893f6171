"""Trees that follow acceptance: each step verifies the draft level with the most expected tokens per second.

The levels lie under the tree a generation would verify (the full tree): no speculation (plain
decoding), the head paths alone, the copy branches alone (full length, and cut to
:data:`SHORT_COPY` tokens), and heads with copy branches. A step reports how far its head paths and
its copy branches each got, which tells exactly what every level under it would have accepted (a
level whose heads and copy depth it covers). Each row keeps a running estimate of the tokens a step
of each level gives it. Each level's step time is measured on the device in use, per batch size, over
its first few steps in the process, then kept fixed, so that decisions depend only on what the drafts
achieve. A batch shares one tree per step: the level with the best mean over the live rows of (tokens
per step) / (seconds per step) wins, the full tree keeping its place unless a smaller level promises
:data:`MARGIN` more. While a smaller level wins, the full tree is tried again now and then (after 8
steps, doubling up to 64 while it keeps losing), so a row whose drafts start being accepted again
gets them back, and a row whose drafts are not accepted stops paying for verification.
"""

import statistics

from .tree import TreeBuffers

# Weight of the newest step in a row's running estimate, once the row has more than 1 / SMOOTHING steps.
SMOOTHING = 0.15
# A smaller level must promise this much more speed than the full tree to replace it: accept lengths are
# noisy (0 on one step, 9 on the next), and leaving the full tree loses its gains until the next probe.
# Measured on an H200 at batch size 1, where the full tree costs ~1.3 plain steps, following every
# estimate without a margin ran at 2.02x the greedy loop on MT-bench against 2.39x for the fixed tree.
MARGIN = 1.15
SHORT_COPY = 4  # the shorter copy branches tried (where each verified token costs, as on a CPU)
TIMED_STEPS = 2  # step times measured per level and batch size, after one untimed step (graph capture)
FIRST_PROBE, LAST_PROBE = 8, 64


class StepTimes:
    """Seconds per step by (batch size, tree), from the first :data:`TIMED_STEPS` timed steps of each."""

    def __init__(self):
        self._samples: dict[tuple, list[float]] = {}

    def record(self, batch_size: int, tree: TreeBuffers, seconds: float) -> None:
        samples = self._samples.setdefault((batch_size, tree.key), [])
        if len(samples) <= TIMED_STEPS:  # the first sample includes capture or compilation: dropped below
            samples.append(seconds)

    def seconds(self, batch_size: int, tree: TreeBuffers) -> float | None:
        samples = self._samples.get((batch_size, tree.key), [])
        return statistics.median(samples[1:]) if len(samples) > TIMED_STEPS else None


def head_paths(tree: TreeBuffers) -> tuple:
    """The tree's head paths (its key without the copy branches' entry)."""
    return tuple(p for p in tree.key if p[0] != "copy")


def covers(outer: TreeBuffers, inner: TreeBuffers) -> bool:
    """Whether a step of ``outer`` tells what ``inner`` would have accepted: the same head paths or none, and
    the same copy chains at most as deep, or none."""
    return ((not inner.head_depth or head_paths(inner) == head_paths(outer))
            and (not inner.copy_chains or (inner.copy_chains == outer.copy_chains
                                           and inner.copy_depth <= outer.copy_depth)))


def accepted_by(tree: TreeBuffers, head_length: int, copy_length: int) -> int:
    """What ``tree`` accepts of a step whose head paths got ``head_length`` and copy branches ``copy_length``."""
    return max(head_length if tree.head_depth else 0, min(copy_length, tree.copy_depth))


class AcceptanceFollower:
    """Chooses each step's level for a batch from per-row running estimates and measured step times.

    A row's estimate of a level is the mean of what the level would have accepted in the row's steps so
    far, then (past ``1 / SMOOTHING`` steps) a running average weighting recent steps more. A row's first
    step verifies the full tree, which measures every level at once.

    Args:
        levels: the trees, smallest first, the full tree last (it covers every other).
        times: the process's step times (kept on the model, shared by generations).
        batch_size: rows in the cache.
    """

    def __init__(self, levels: list[TreeBuffers], times: StepTimes, batch_size: int):
        self.levels, self.times = levels, times
        self.tokens = [[1.0] * batch_size for _ in levels]  # [level][row] expected tokens per step
        self.seen = [[0] * batch_size for _ in levels]  # [level][row] steps that measured it
        self.probe_every, self.since_probe = FIRST_PROBE, 0

    def choose(self, batch_size: int, live: list[int]) -> int:
        """The level to run next for the ``live`` cache rows."""
        full = len(self.levels) - 1
        seconds = [self.times.seconds(batch_size, tree) for tree in self.levels]
        if None in seconds:  # measure every level's step time first, largest first
            return max(i for i, s in enumerate(seconds) if s is None)
        if any(not self.seen[full][r] for r in live):  # a new row: measure every level at once
            return full
        speeds = [sum(self.tokens[level][r] for r in live) / len(live) / s for level, s in enumerate(seconds)]
        best = max(range(full), key=speeds.__getitem__)
        if speeds[full] * MARGIN >= speeds[best]:
            self.probe_every, self.since_probe = FIRST_PROBE, 0
            return full
        self.since_probe += 1
        if self.since_probe >= self.probe_every:
            self.since_probe, self.probe_every = 0, min(2 * self.probe_every, LAST_PROBE)
            return full
        return best

    def update(self, level: int, live: list[int], head_length: list[int], copy_length: list[int]) -> None:
        """Book a step of ``level``: how far each live row's head paths and copy branches got."""
        ran = self.levels[level]
        for other, tree in enumerate(self.levels):
            if covers(ran, tree):
                for r in live:
                    self.seen[other][r] += 1
                    observed = 1 + accepted_by(tree, head_length[r], copy_length[r])
                    weight = max(SMOOTHING, 1 / self.seen[other][r])
                    self.tokens[other][r] += weight * (observed - self.tokens[other][r])

    def reset_rows(self, rows: list[int]) -> None:
        """Rows that start a new prompt: nothing measured yet."""
        for estimates, seen in zip(self.tokens, self.seen):
            for r in rows:
                estimates[r], seen[r] = 1.0, 0

    def resized(self, levels: list[TreeBuffers], rows: list[int]) -> "AcceptanceFollower":
        """The follower of a smaller batch of ``rows`` (old indices, new order) with its own ``levels``: a row
        keeps what it measured of each level it had; the full tree of a new level set is measured anew."""
        follower = AcceptanceFollower(levels, self.times, len(rows))
        known = {tree.key: level for level, tree in enumerate(self.levels)}
        for level, tree in enumerate(levels[:-1] if levels[-1].key != self.levels[-1].key else levels):
            if tree.key in known:
                old = known[tree.key]
                follower.tokens[level] = [self.tokens[old][r] for r in rows]
                follower.seen[level] = [self.seen[old][r] for r in rows]
        return follower


def draft_levels(full: TreeBuffers, subtree) -> list[TreeBuffers]:
    """The levels under ``full``, smallest first. ``subtree(head_paths, copy_chains, copy_depth)`` builds a level's
    buffers (head paths ``"none"`` for none); ``full`` itself comes last."""
    if full.num_nodes == 1:
        return [full]
    heads = [list(p) for p in head_paths(full)] if full.head_depth else "none"
    depths = sorted({min(SHORT_COPY, full.copy_depth), full.copy_depth}) if full.copy_chains else []
    levels = [subtree("none", 0, 0)] + ([subtree(heads, 0, 0)] if full.head_depth else [])
    for depth in depths:
        levels += [subtree("none", full.copy_chains, depth)] + ([subtree(heads, full.copy_chains, depth)]
                                                                if full.head_depth else [])
    unique = {tree.key: tree for tree in levels if tree.key != full.key}
    return sorted(unique.values(), key=lambda tree: tree.num_nodes) + [full]
