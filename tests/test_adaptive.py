"""Trees that follow acceptance: the level chooser on its own, and generation with it against plain greedy."""

import pytest
import torch

from medusa.model import adaptive, generate_medusa_buffers
from medusa.model.adaptive import AcceptanceFollower, LevelHistory, accepted_by, covers, draft_levels
from tests.fitting import greedy_reference
from tests.test_copy_branches import brute_force_matches, repetitive_prompt
from tests.test_generate import CUSTOM, batch_prompts, fitted, prompts, random_heads
from tests.tiny import tiny_model

NONE = generate_medusa_buffers([])
HEADS = generate_medusa_buffers(CUSTOM)
COPY = generate_medusa_buffers([], copy_chains=2, copy_depth=4)
FULL = generate_medusa_buffers(CUSTOM, copy_chains=2, copy_depth=4)


def subtree(paths, chains, depth):
    return generate_medusa_buffers([] if paths == "none" else paths, copy_chains=chains, copy_depth=depth)


def timed(seconds: dict, batch_size: int = 1) -> LevelHistory:
    """Step times as if measured: ``{tree: seconds}`` (the untimed first step included)."""
    times = LevelHistory()
    for tree, s in seconds.items():
        for _ in range(adaptive.TIMED_STEPS + 1):
            times.record(batch_size, tree, s)
    return times


def test_levels_under_a_tree_and_what_each_step_tells_of_them():
    keys = lambda levels: [tree.key for tree in levels]  # noqa: E731
    full = generate_medusa_buffers(CUSTOM, copy_chains=2, copy_depth=10)
    short = subtree(CUSTOM, 2, adaptive.SHORT_COPY)
    expected = [NONE, HEADS, subtree("none", 2, 4), subtree("none", 2, 10), short, full]
    assert keys(draft_levels(full, subtree)) == keys(sorted(expected[:-1], key=lambda t: t.num_nodes)) + [full.key]
    assert keys(draft_levels(COPY, subtree)) == [(), COPY.key]  # 4 deep: the short copy level is the tree itself
    assert keys(draft_levels(HEADS, subtree)) == [(), HEADS.key] and keys(draft_levels(NONE, subtree)) == [()]
    # A step of the full tree covers every level; the copy branches alone cover only copy levels no deeper.
    assert all(covers(full, tree) for tree in expected)
    assert covers(COPY, subtree("none", 2, 3)) and not covers(COPY, HEADS) and not covers(HEADS, COPY)
    assert not covers(COPY, subtree("none", 2, 5)) and not covers(COPY, subtree("none", 1, 4))
    # Head paths 3 deep got 2 tokens, copies 7: a 4-deep copy level would have got 4.
    assert [accepted_by(t, 2, 7) for t in (NONE, HEADS, short, full)] == [0, 2, 4, 7]


def test_step_times_drop_the_first_step_and_follow_the_latest_steps():
    times = LevelHistory()
    for s in (9.0, 1.0):
        times.record(1, FULL, s)
    assert times.seconds(1, FULL) is None  # not yet TIMED_STEPS timed steps
    times.record(1, FULL, 3.0)
    assert times.seconds(1, FULL) == 2.0  # median of 1 and 3; the first (capture) step dropped
    times.record(1, FULL, 100.0)
    assert times.seconds(1, FULL) == 3.0 and times.seconds(2, FULL) is None
    for _ in range(adaptive.TIME_WINDOW):  # the machine got slower: the median follows within a window
        times.record(1, FULL, 5.0)
    assert times.seconds(1, FULL) == 5.0


def test_unmeasured_levels_are_run_first_largest_first():
    times = LevelHistory()
    follower = AcceptanceFollower([NONE, COPY, FULL], times, 1)
    order = []
    for _ in range(3 * (adaptive.TIMED_STEPS + 1)):
        level = follower.choose(1, [0])
        order.append(level)
        times.record(1, follower.levels[level], 1.0)
    n = adaptive.TIMED_STEPS + 1
    assert order == [2] * n + [1] * n + [0] * n


@pytest.mark.parametrize("full_seconds, gaps", [(1.5, [16, 32, 64, 64]),  # the tries cost little: spaced as before
                                                 (2.0, [34, 34, 64, 64])])  # dear: tries spaced to cost <= 2 %
def test_the_level_with_most_tokens_per_second_wins_and_the_full_tree_is_probed_ever_less_often(full_seconds, gaps):
    follower = AcceptanceFollower([NONE, HEADS, FULL], timed({NONE: 1.0, HEADS: 1.2, FULL: full_seconds}), 2)
    assert (full_seconds / 1.2 - 1) / adaptive.PROBE_BUDGET == pytest.approx({1.5: 12.5, 2.0: 33.3}[full_seconds], 0.01)
    for _ in range(30):  # the heads give 2 tokens a step on both rows, the copies nothing
        follower.update(2, [0, 1], head_length=[1, 1], copy_length=[0, 0])
    assert follower.choose(1, [0, 1]) == 1  # heads alone: 2 / 1.2 beats 1 / 1.0 and 2 / full (with the margin)
    choices = [follower.choose(1, [0, 1]) for _ in range(300)]
    probes = [i for i, level in enumerate(choices) if level == 2]
    assert [b - a for a, b in zip(probes, probes[1:])][:4] == gaps and set(choices) == {1, 2}
    for _ in range(30):  # the copies start to be accepted: 4 tokens a step
        follower.update(2, [0, 1], head_length=[1, 1], copy_length=[3, 3])
    assert follower.choose(1, [0, 1]) == 2 and follower.probe_every == adaptive.FIRST_PROBE


def test_a_small_level_must_beat_the_full_tree_and_any_draft_plain_decoding_by_the_margin():
    follower = AcceptanceFollower([NONE, HEADS, FULL], timed({NONE: 1.0, HEADS: 1.0, FULL: 1.0}), 1)
    follower.known = [[True]] * 3
    follower.tokens = [[1.0], [2.0], [2.0 / adaptive.MARGIN + 1e-6]]  # the full tree slightly slower, within the margin
    assert follower.choose(1, [0]) == 2
    follower.tokens[2][0] = 2.0 / adaptive.MARGIN - 1e-3
    assert follower.choose(1, [0]) == 1
    follower.tokens = [[1.0], [adaptive.MARGIN - 1e-3], [1.0]]  # the best draft faster than plain, within the margin
    assert follower.choose(1, [0]) == 0
    follower.tokens[1][0] = adaptive.MARGIN + 1e-3
    assert follower.choose(1, [0]) == 1
    follower.tokens = [[1.0], [1.0], [adaptive.MARGIN - 1e-3]]  # the full tree too
    assert follower.choose(1, [0]) == 0


def test_a_step_updates_the_levels_it_covers_but_the_copy_levels_and_estimates_start_as_means():
    follower = AcceptanceFollower([NONE, HEADS, COPY, FULL], timed({}), 1)
    follower.update(1, [0], head_length=[3], copy_length=[0])  # heads alone: the copies unknown
    assert [follower.seen[level][0] for level in range(4)] == [1, 1, 0, 0]
    assert follower.tokens[1][0] == 4.0 and follower.tokens[3][0] == 1.0
    follower.update(3, [0], head_length=[1], copy_length=[4])  # the full tree: every level but the copy-only one
    assert [follower.seen[level][0] for level in range(4)] == [2, 2, 0, 1]
    assert follower.tokens[1][0] == 3.0 and follower.tokens[3][0] == 5.0 and follower.tokens[2][0] == 1.0
    for _ in range(100):  # past 1 / SMOOTHING steps, recent steps weigh more than a mean would
        follower.update(3, [0], head_length=[0], copy_length=[0])
    assert follower.tokens[3][0] == pytest.approx(1.0, abs=1e-6)


def observed(follower, monkeypatch) -> list[tuple[int, int, int, int]]:
    """Every (level, row, tokens, match) the follower books of a replayed copy step."""
    booked = []
    observe = follower._observe_copy
    monkeypatch.setattr(follower, "_observe_copy", lambda level, r, match, tokens: (
        booked.append((level, r, tokens, match)), observe(level, r, match, tokens)))
    return booked


@pytest.mark.parametrize("depth", [4, 10])
def test_replayed_copy_levels_book_what_verifying_the_copies_accepts(depth, monkeypatch):
    model = fitted("llama", 4)
    copy = model.tree_buffers("none", 2, depth)
    longest, history, everything = 0, timed({}), []
    for input_ids in [repetitive_prompt(1), repetitive_prompt(2), prompts(8, 1)[0]]:
        real = [out["accept_length"] for out in model.medusa_generate(
            input_ids, max_new_tokens=40, medusa_choices="none", copy_chains=2, copy_depth=depth, adaptive=False,
            eos_token_id=[])]
        text = torch.cat([input_ids[0], torch.tensor(greedy_reference(model.base_model, input_ids, 40))])
        booked = {}
        for grown in (False, True):  # the whole text at once, and token by token as a generation reveals it
            follower = AcceptanceFollower([NONE, copy], history, 2)
            follower.reset_rows([1], [input_ids.shape[1]])
            booked[grown] = observed(follower, monkeypatch)
            for end in range(input_ids.shape[1], len(text) + 1) if grown else [len(text)]:
                follower.replay({1: text[:end]})
            # The next step's root is the text's last token: its match, by a brute-force search.
            assert follower.match[1] == max((n for n, _ in brute_force_matches(text.tolist())), default=0)
        assert booked[False] == booked[True]
        everything += booked[False] + booked[True]
        assert all(level == 1 and r == 1 for level, r, *_ in booked[False])
        tokens = [t for _, _, t, _ in booked[False]]
        assert tokens == [1 + a for a in real[: len(tokens)]] and len(tokens) >= len(real) - depth - 1
        # Each replayed step is booked with the match of its root's text (the step after position t).
        t = input_ids.shape[1] - 1
        for _, _, tokens_, match in booked[False]:
            assert match == max((n for n, _ in brute_force_matches(text[: t + 2].tolist())), default=0)
            t += tokens_
        longest = max(longest, *tokens)
    assert longest > 3  # copies were accepted
    # The process's mean for each match: what every replayed step after such a match gave.
    for match in range(5):
        tokens = [t for _, _, t, m in everything if m == match]
        assert history.copy_tokens(copy, match) == (pytest.approx(sum(tokens) / len(tokens)) if tokens else None)
    assert {m for *_, m in everything} >= {0, 3}


def test_copy_levels_are_estimated_by_the_match_of_the_next_step_and_mixed_levels_by_their_better_part():
    levels = [NONE, HEADS, COPY, FULL]
    history = timed({NONE: 1.0, HEADS: 1.0, COPY: 1.0, FULL: 1.3})
    follower = AcceptanceFollower(levels, history, 2)
    for match, tokens in ((0, 1), (0, 1), (0, 2), (3, 5), (3, 4)):
        history.record_copy(COPY, match, tokens)
    follower.tokens[1] = [2.0, 1.5]  # the heads alone, per row
    follower.match = [3, 0]
    assert follower.estimate(2, 0) == 4.5 and follower.estimate(2, 1) == pytest.approx(4 / 3)
    assert follower.estimate(3, 0) == 4.5 and follower.estimate(3, 1) == 1.5  # the better of heads and copies
    follower.match = [2, 2]  # no step has followed a 2-token match yet: the row's own estimate
    follower.tokens[2], follower.tokens[3] = [1.25, 1.0], [3.0, 2.5]
    assert [follower.estimate(level, 0) for level in (2, 3)] == [1.25, 3.0]
    follower.known = [[True] * 2 for _ in levels]
    follower.match = [3, 3]
    assert follower.choose(1, [0, 1]) == 2  # copies: 4.5 a step beat the heads' 2.0 and 1.5
    follower.match = [0, 0]
    assert follower.choose(1, [0, 1]) == 1  # no match: the heads (1.75 on average) beat copies (1.33)


def test_the_first_rows_run_the_full_tree_first_and_later_rows_start_from_them():
    history = timed({NONE: 1.0, FULL: 1.5})
    follower = AcceptanceFollower([NONE, FULL], history, 2)
    follower.reset_rows([0, 1], [5, 5])
    assert follower.choose(1, [0]) == 1  # nothing measured yet
    for _ in range(40):
        follower.update(1, [0, 1], head_length=[0, 4], copy_length=[0, 0])
    assert follower.choose(1, [0]) == 0 and follower.choose(1, [1]) == 1
    follower.reset_rows([0], [5])  # no row has finished: nothing to start from
    assert follower.tokens[1][0] == 1.0 and follower.seen[1][0] == 0 and follower.choose(1, [0]) == 1
    follower.finish_rows([1])
    assert history.tokens(FULL) == follower.tokens[1][1] == pytest.approx(5.0)
    later = AcceptanceFollower([NONE, FULL], history, 1)
    later.reset_rows([0], [5])
    assert later.tokens[1] == [pytest.approx(5.0)] and later.seen[1] == [0] and later.choose(1, [0]) == 1
    follower.reset_rows([0], [5])
    smaller = follower.resized([NONE, HEADS, FULL], [1, 0])  # rows reordered; the full tree the same
    assert smaller.tokens[2] == [follower.tokens[1][1], follower.tokens[1][0]] and smaller.seen[2] == [40, 0]
    assert smaller.seen[1] == [0, 0] and smaller.known[1] == [False, False] and smaller.history is follower.history


def run(model, input_ids, **kwargs):
    tokens, accepted = [], []
    for out in model.medusa_generate(input_ids, eos_token_id=[], **kwargs):
        tokens += out["new_token_ids"]
        accepted.append(out["accept_length"])
    return tokens, accepted


def recording_choices(monkeypatch) -> list[tuple]:
    """The key of the tree each step chooses."""
    chosen = []
    choose = AcceptanceFollower.choose

    def recorded(self, *args):
        level = choose(self, *args)
        chosen.append(self.levels[level].key)
        return level

    monkeypatch.setattr(AcceptanceFollower, "choose", recorded)
    return chosen


def level_times(model, heads, copy, full) -> LevelHistory:
    """Step times of the levels under CUSTOM with 2 copy chains of 4: plain steps take 1."""
    return timed({model.tree_buffers("none"): 1.0, model.tree_buffers(CUSTOM): heads,
                  model.tree_buffers("none", 2, 4): copy, model.tree_buffers(CUSTOM, 2, 4): full})


def test_a_row_whose_drafts_are_not_accepted_falls_back_to_no_tree_and_stays_greedy(monkeypatch):
    base = tiny_model("llama", seed=5)
    model = random_heads(base, 3, "shared_lm_head", seed=3)
    model.level_history = level_times(model, 2.0, 2.0, 3.0)  # as on a CPU: verification is dear
    chosen = recording_choices(monkeypatch)
    input_ids = torch.arange(3, 40)[None]  # distinct tokens: nothing to copy at first
    tokens, accepted = run(model, input_ids, max_new_tokens=60, medusa_choices=CUSTOM, copy_chains=2, copy_depth=4,
                           adaptive=True)
    assert tokens == greedy_reference(base, input_ids, 60)
    assert chosen.count(()) > len(chosen) / 2  # mostly plain steps
    assert all(a == 0 for a, key in zip(accepted, chosen) if key == ())


def test_accepted_drafts_keep_the_full_tree_and_stay_greedy(monkeypatch):
    model = fitted("llama", 4)
    model.level_history = level_times(model, 1.1, 1.1, 1.2)
    chosen = recording_choices(monkeypatch)
    for input_ids in prompts(100, 4)[:2]:  # the heads were fitted on these
        tokens, accepted = run(model, input_ids, max_new_tokens=40, medusa_choices=CUSTOM, copy_chains=2, copy_depth=4,
                               adaptive=True)
        assert tokens == greedy_reference(model.base_model, input_ids, 40)
    assert chosen.count(model.tree_buffers(CUSTOM, 2, 4).key) > 0.8 * len(chosen)


@pytest.mark.parametrize("batch_size", [None, 2])
def test_adaptive_batches_and_continuous_batching_stay_greedy(batch_size):
    base = tiny_model("qwen2", seed=5)
    model = random_heads(base, 3, "shared_lm_head", seed=3)
    batch = batch_prompts(4, 5) + [repetitive_prompt(3)[0]]
    references = [greedy_reference(base, p[None], 30) for p in batch]
    outputs = [[] for _ in batch]
    for rows in model.medusa_generate(batch, max_new_tokens=30, eos_token_id=[], batch_size=batch_size,
                                      adaptive=True):
        for output, row in zip(outputs, rows):
            output += row["new_token_ids"] if row else []
    assert outputs == references
