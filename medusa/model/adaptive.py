"""Trees that follow acceptance: each step verifies the draft level with the most expected tokens per second.

The levels lie under the tree a generation would verify (the full tree): no speculation (plain
decoding), the head paths alone, the copy branches alone (full length, and cut to
:data:`SHORT_COPY` tokens), and heads with copy branches. Each row keeps a running estimate of the
tokens a step of each level gives it:

- copied tokens depend on the text alone, so the copy-only levels are measured on every step by
  replaying them on the row's text, whatever the step verified. What they accept depends mostly on how
  long a match the text's end has earlier in the text (:func:`~medusa.model.candidates.copy_match`: 0
  to 3 tokens), so their estimate is the process's mean for the match of the step about to run, not a
  running average of the row's past steps, which lags behind the end of every burst of copied text;
- a step reports how far its head paths and its copy branches each got, which tells exactly what every
  level under it would have accepted (a level whose heads and copy depth it covers). A level with both
  heads and copies is estimated by the better of its two parts where the follower has the heads alone
  as a level (a conservative bound: the step gets the longer of the two).

A new row starts from what earlier rows of the process measured (the first row ever verifies the full
tree first). Each level's step time is measured on the device in use, per batch size: the median of its
latest steps. A batch shares one tree per step: the level with the best mean over the live rows of
(tokens per step) / (seconds per step) wins, with two margins (:data:`MARGIN`) against estimates that
err: among the drafts the full tree keeps its place unless a smaller level promises that much more, and
any draft must promise that much more than plain decoding. While a smaller level wins, the full tree is tried again now and then (after 8 steps, doubling up
to 64 while it keeps losing, and never so often that the tries cost more than :data:`PROBE_BUDGET` of
the time), so a row whose head drafts start being accepted again gets them back, and a row whose
drafts are not accepted stops paying for verification.
"""

import statistics

import torch

from .candidates import copy_agreement, copy_match
from .tree import TreeBuffers

# Weight of the newest step in a row's running estimate, once the row has more than 1 / SMOOTHING steps.
SMOOTHING = 0.15
# A smaller level must promise this much more speed than the full tree to replace it, and a draft this
# much more than plain decoding: accept lengths are noisy (0 on one step, 9 on the next) and come in bursts,
# so estimates lag. Measured on an H200 at batch size 1, where the full tree costs ~1.3 plain steps,
# following every estimate without a margin ran at 2.02x the greedy loop on MT-bench against 2.39x for
# the fixed tree; on a 2-core CPU, where drafts cost 2-3 plain steps, rows kept the full tree within the
# first margin while plain decoding was faster (benchmarks/HISTORY.md, eighth session).
MARGIN = 1.15
SHORT_COPY = 4  # the shorter copy branches tried (where each verified token costs, as on a CPU)
TIMED_STEPS = 2  # step times a level needs before it is chosen on them, after one untimed step (graph capture)
TIME_WINDOW = 8  # a level's step time is the median of its latest steps (machine load drifts)
FIRST_PROBE, LAST_PROBE = 8, 64
# Most of a row's time that trying the full tree may take while a smaller level wins (on a 2-core CPU, where
# the full tree cost ~3 plain steps, this spaces the tries by ~100 steps).
PROBE_BUDGET = 0.02


class LevelHistory:
    """What trees that follow acceptance keep for a process (one per model): each level's seconds per step by
    batch size, the median of its latest :data:`TIME_WINDOW` steps (after at least :data:`TIMED_STEPS`), and
    the tokens per step each level gave the rows so far (a running mean, a new row's first estimate)."""

    def __init__(self):
        self._samples: dict[tuple, list[float]] = {}
        self._tokens: dict[tuple, float] = {}
        self._copies: dict[tuple, list[float]] = {}  # (tree, match) -> [mean tokens per step, steps]

    def record(self, batch_size: int, tree: TreeBuffers, seconds: float) -> None:
        samples = self._samples.setdefault((batch_size, tree.key), [])
        samples.append(seconds)  # the first sample includes capture or compilation: never used
        if len(samples) > TIME_WINDOW + 1:
            del samples[1]

    def seconds(self, batch_size: int, tree: TreeBuffers) -> float | None:
        samples = self._samples.get((batch_size, tree.key), [])
        return statistics.median(samples[1:]) if len(samples) > TIMED_STEPS else None

    def remember(self, tree: TreeBuffers, tokens: float) -> None:
        """Book a row's estimate of ``tree``'s tokens per step (recent rows weigh more)."""
        known = self._tokens.get(tree.key)
        self._tokens[tree.key] = tokens if known is None else known + SMOOTHING * (tokens - known)

    def tokens(self, tree: TreeBuffers) -> float | None:
        """Tokens per step ``tree`` gave earlier rows; None before any."""
        return self._tokens.get(tree.key)

    def record_copy(self, tree: TreeBuffers, match: int, tokens: int) -> None:
        """Book a replayed step of the copy-only level ``tree`` taken after a ``match``-token match."""
        mean = self._copies.setdefault((tree.key, match), [0.0, 0])
        mean[1] += 1
        mean[0] += (tokens - mean[0]) / mean[1]

    def copy_tokens(self, tree: TreeBuffers, match: int) -> float | None:
        """Mean tokens per step of the copy-only level ``tree`` after a ``match``-token match; None before any."""
        mean = self._copies.get((tree.key, match))
        return None if mean is None else mean[0]


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

    A row's estimate of a level with head paths is the mean of what the level gave the row so far, then
    (past ``1 / SMOOTHING`` steps) a running average weighting recent steps more; before its first such
    step, what the level gave earlier rows (:class:`LevelHistory`). Copy branches are estimated from the
    match the row's text has now (see the module's docstring).

    Args:
        levels: the trees, smallest first, the full tree last (it covers every other).
        history: the process's step times and acceptance (kept on the model, shared by generations).
        batch_size: rows in the cache.
    """

    def __init__(self, levels: list[TreeBuffers], history: LevelHistory, batch_size: int):
        self.levels, self.history = levels, history
        self.tokens = [[1.0] * batch_size for _ in levels]  # [level][row] expected tokens per step
        self.seen = [[0] * batch_size for _ in levels]  # [level][row] steps that measured it
        self.known = [[False] * batch_size for _ in levels]  # [level][row] measured, or known from earlier rows
        # [level][row] the position the next replayed copy step is after (None: the row's text so far)
        self.replayed: list[list[int | None]] = [[None] * batch_size for _ in levels]
        self.copy_only = [i for i, tree in enumerate(levels) if tree.copy_chains and not tree.head_depth]
        self.heads_only = next((i for i, tree in enumerate(levels) if tree.head_depth and not tree.copy_chains), None)
        self.match = [0] * batch_size  # [row] the match the row's next step copies after
        self.probe_every, self.since_probe = FIRST_PROBE, 0

    def choose(self, batch_size: int, live: list[int]) -> int:
        """The level to run next for the ``live`` cache rows."""
        full = len(self.levels) - 1
        seconds = [self.history.seconds(batch_size, tree) for tree in self.levels]
        if None in seconds:  # measure every level's step time first, largest first
            return max(i for i, s in enumerate(seconds) if s is None)
        if any(not self.known[full][r] for r in live):  # the first rows: measure every level at once
            return full
        speeds = [sum(self.estimate(level, r) for r in live) / len(live) / s for level, s in enumerate(seconds)]
        # Among the drafts, the full tree keeps its place unless a smaller one promises MARGIN more; any draft
        # must promise MARGIN more than plain decoding (levels[0]), which costs nothing when estimates err.
        best = max(range(1, full), key=speeds.__getitem__, default=full)
        draft = full if speeds[full] * MARGIN >= speeds[best] else best
        if draft == full and speeds[full] >= MARGIN * speeds[0]:
            self.probe_every, self.since_probe = FIRST_PROBE, 0
            return full
        choice = draft if speeds[draft] >= MARGIN * speeds[0] else 0
        self.since_probe += 1
        if self.since_probe >= max(self.probe_every, (seconds[full] / seconds[choice] - 1) / PROBE_BUDGET):
            self.since_probe, self.probe_every = 0, min(2 * self.probe_every, LAST_PROBE)
            return full
        return choice

    def estimate(self, level: int, row: int) -> float:
        """The tokens a step of ``level`` is expected to give ``row`` now."""
        tree = self.levels[level]
        copied = self.history.copy_tokens(self._copy_level(tree), self.match[row]) if tree.copy_chains else None
        if copied is None or (tree.head_depth and self.heads_only is None):
            return self.tokens[level][row]
        return max(copied, self.tokens[self.heads_only][row]) if tree.head_depth else copied

    def _copy_level(self, tree: TreeBuffers) -> TreeBuffers:
        """The copy-only level with ``tree``'s copy branches (``tree`` itself for one), whose replays estimate them."""
        return next((self.levels[i] for i in self.copy_only if self.levels[i].copy_chains == tree.copy_chains
                     and self.levels[i].copy_depth == tree.copy_depth), tree)

    def _observe(self, level: int, row: int, tokens: int) -> None:
        self.seen[level][row] += 1
        self.known[level][row] = True
        weight = max(SMOOTHING, 1 / self.seen[level][row])
        self.tokens[level][row] += weight * (tokens - self.tokens[level][row])

    def update(self, level: int, live: list[int], head_length: list[int], copy_length: list[int]) -> None:
        """Book a step of ``level``: how far each live row's head paths and copy branches got (the copy-only
        levels are booked by :meth:`replay` instead)."""
        ran = self.levels[level]
        for other, tree in enumerate(self.levels):
            if covers(ran, tree) and other not in self.copy_only:
                for r in live:
                    self._observe(other, r, 1 + accepted_by(tree, head_length[r], copy_length[r]))

    def replay(self, texts: dict[int, torch.Tensor]) -> None:
        """Book the steps the copy-only levels would have taken on each live row's text so far (``texts[row]``,
        1-D: prompt, reply and the next step's root), as far as the text is known: their tokens depend on the
        text alone. Then note the match each row's next step copies after."""
        for level in self.copy_only:
            for r, text in texts.items():
                if self.replayed[level][r] is None:
                    self.replayed[level][r] = len(text) - 2
        while True:
            due = [(level, r) for level in self.copy_only for r, text in texts.items()
                   if self.replayed[level][r] + 2 + self.levels[level].copy_depth <= len(text)]
            if not due:
                break
            depth = max(self.levels[level].copy_depth for level, _ in due)
            padded = torch.nn.utils.rnn.pad_sequence([texts[r] for _, r in due], batch_first=True, padding_value=-1)
            steps = torch.tensor([self.replayed[level][r] for level, r in due], device=padded.device)
            got = copy_agreement(padded, steps, self.levels[due[0][0]].copy_chains, depth).tolist()
            matches = copy_match(padded, steps + 1).tolist()
            for (level, r), agreed, match in zip(due, got, matches):
                accepted = min(agreed, self.levels[level].copy_depth)
                self._observe_copy(level, r, match, 1 + accepted)
                self.replayed[level][r] += accepted + 1
        if texts:
            rows = list(texts)
            padded = torch.nn.utils.rnn.pad_sequence([texts[r] for r in rows], batch_first=True, padding_value=-1)
            ends = torch.tensor([len(texts[r]) - 1 for r in rows], device=padded.device)
            for r, match in zip(rows, copy_match(padded, ends).tolist()):
                self.match[r] = match

    def _observe_copy(self, level: int, row: int, match: int, tokens: int) -> None:
        self.history.record_copy(self.levels[level], match, tokens)

    def finish_rows(self, rows: list[int]) -> None:
        """Rows that finished: what they measured becomes the next rows' first estimate."""
        for level, tree in enumerate(self.levels):
            for r in rows:
                if self.seen[level][r]:
                    self.history.remember(tree, self.tokens[level][r])

    def reset_rows(self, rows: list[int], prompt_lengths: list[int]) -> None:
        """Rows that start a new prompt of ``prompt_lengths`` tokens: the estimates earlier rows left."""
        for level, tree in enumerate(self.levels):
            prior = self.history.tokens(tree)
            for r, length in zip(rows, prompt_lengths):
                self.tokens[level][r] = 1.0 if prior is None else prior
                self.seen[level][r], self.known[level][r] = 0, prior is not None
                self.replayed[level][r] = length - 1  # the first step is after the prompt's last token
        for r in rows:
            self.match[r] = 0  # until replay() sees the row's root

    def resized(self, levels: list[TreeBuffers], rows: list[int]) -> "AcceptanceFollower":
        """The follower of a smaller batch of ``rows`` (old indices, new order) with its own ``levels``: a row
        keeps what it measured of each level it had; the full tree of a new level set is measured anew."""
        follower = AcceptanceFollower(levels, self.history, len(rows))
        known = {tree.key: level for level, tree in enumerate(self.levels)}
        for level, tree in enumerate(levels[:-1] if levels[-1].key != self.levels[-1].key else levels):
            if tree.key in known:
                old = known[tree.key]
                for mine, theirs in ((follower.tokens, self.tokens), (follower.seen, self.seen),
                                     (follower.known, self.known), (follower.replayed, self.replayed)):
                    mine[level] = [theirs[old][r] for r in rows]
        follower.match = [self.match[r] for r in rows]
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
