"""Trees that follow acceptance: each step verifies the draft level with the most expected tokens per second.

Levels, smallest first: no speculation (plain decoding), the copy branches alone, and the full tree
(heads and copy branches). Each row keeps a running estimate of the tokens a step of each level would
give it; a full step measures both speculating levels at once (its copy branches' own accept length is
reported beside the step's). Each level's step time is measured on the device in use, per batch size,
over its first few steps in the process, then kept fixed, so that decisions depend only on what the
drafts achieve. A batch shares one tree per step: the level with the best mean over the live rows of
(tokens per step) / (seconds per step) wins, the full tree keeping its place unless a smaller level
promises :data:`MARGIN` more. While a smaller level wins, the full tree is tried again now
and then (after 8 steps, doubling up to 64 while it keeps losing), so a row whose drafts start being
accepted again gets them back, and a row whose drafts are not accepted stops paying for verification.
"""

import statistics

from .tree import TreeBuffers

# Running-estimate weight of the newest step, and the prior tokens per step of a row not yet measured.
SMOOTHING = 0.15
PRIOR_TOKENS = 2.0
# A smaller level must promise this much more speed than the full tree to replace it: accept lengths are
# noisy (0 on one step, 9 on the next), and leaving the full tree loses its gains until the next probe.
# Measured on an H200 at batch size 1, where the full tree costs ~1.3 plain steps, following every
# estimate without a margin ran at 2.02x the greedy loop on MT-bench against 2.39x for the fixed tree.
MARGIN = 1.15
TIMED_STEPS = 3  # step times measured per level and batch size, after one untimed step (graph capture)
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


class AcceptanceFollower:
    """Chooses each step's level for a batch from per-row running estimates and measured step times.

    Args:
        levels: the trees, smallest first; ``levels[0]`` is the root-only tree.
        times: the process's step times (kept on the model, shared by generations).
        batch_size: rows in the cache.
    """

    def __init__(self, levels: list[TreeBuffers], times: StepTimes, batch_size: int):
        self.levels, self.times = levels, times
        self.tokens = [[PRIOR_TOKENS] * batch_size for _ in levels]  # [level][row] expected tokens per step
        self.probe_every, self.since_probe = FIRST_PROBE, 0

    def choose(self, batch_size: int, live: list[int]) -> int:
        """The level to run next for the ``live`` cache rows."""
        seconds = [self.times.seconds(batch_size, tree) for tree in self.levels]
        if None in seconds:  # measure every level's step time first, largest first
            return max(i for i, s in enumerate(seconds) if s is None)
        speeds = [self._expected(level, live) / s for level, s in enumerate(seconds)]
        full = len(self.levels) - 1
        best = max(range(full), key=speeds.__getitem__)
        if speeds[full] * MARGIN >= speeds[best]:
            best = full
        if best == full:
            self.probe_every, self.since_probe = FIRST_PROBE, 0
            return full
        self.since_probe += 1
        if self.since_probe >= self.probe_every:
            self.since_probe, self.probe_every = 0, min(2 * self.probe_every, LAST_PROBE)
            return full
        return best

    def _expected(self, level: int, live: list[int]) -> float:
        if level == 0:
            return 1.0
        return sum(self.tokens[level][r] for r in live) / len(live)

    def update(self, level: int, live: list[int], accepted: list[int], copy_accepted: list[int]) -> None:
        """Book a step of ``level``: each live row's accept length and its copy branches' own."""
        copy_level = 1 if len(self.levels) == 3 else None  # with heads and copies, level 1 is the copies alone
        for r in live:
            if level > 0:
                self._smooth(level, r, 1 + accepted[r])
            if level == len(self.levels) - 1 and copy_level is not None:
                self._smooth(copy_level, r, 1 + copy_accepted[r])

    def _smooth(self, level: int, row: int, tokens: int) -> None:
        self.tokens[level][row] += SMOOTHING * (tokens - self.tokens[level][row])

    def reset_rows(self, rows: list[int]) -> None:
        """Rows that start a new prompt: back to the prior."""
        for estimates in self.tokens:
            for r in rows:
                estimates[r] = PRIOR_TOKENS

    def resized(self, levels: list[TreeBuffers], rows: list[int]) -> "AcceptanceFollower":
        """The follower of a smaller batch of ``rows`` (old indices, new order) with its own ``levels``: each row
        keeps its estimates where the levels correspond (same count), else starts from the prior."""
        follower = AcceptanceFollower(levels, self.times, len(rows))
        if len(levels) == len(self.levels):
            follower.tokens = [[estimates[r] for r in rows] for estimates in self.tokens]
        return follower


def draft_levels(full: TreeBuffers, root_only: TreeBuffers, copy_only: TreeBuffers | None) -> list[TreeBuffers]:
    """The levels under ``full``: root-only, then the copy branches alone when ``full`` has both kinds."""
    if full.num_nodes == 1:
        return [full]
    if copy_only is not None and full.head_depth and full.copy_chains:
        return [root_only, copy_only, full]
    return [root_only, full]
