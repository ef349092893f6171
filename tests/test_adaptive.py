"""Trees that follow acceptance: the level chooser on its own, and generation with it against plain greedy."""

import pytest
import torch

from medusa.model import adaptive, generate_medusa_buffers
from medusa.model.adaptive import AcceptanceFollower, StepTimes, draft_levels
from tests.fitting import greedy_reference
from tests.test_copy_branches import repetitive_prompt
from tests.test_generate import CUSTOM, batch_prompts, fitted, prompts, random_heads
from tests.tiny import tiny_model

NONE = generate_medusa_buffers([])
COPY = generate_medusa_buffers([], copy_chains=2, copy_depth=4)
FULL = generate_medusa_buffers(CUSTOM, copy_chains=2, copy_depth=4)


def timed(seconds: dict, batch_size: int = 1) -> StepTimes:
    """Step times as if measured: ``{tree: seconds}`` (the untimed first step included)."""
    times = StepTimes()
    for tree, s in seconds.items():
        for _ in range(adaptive.TIMED_STEPS + 1):
            times.record(batch_size, tree, s)
    return times


def test_levels_under_a_tree():
    assert draft_levels(FULL, NONE, COPY) == [NONE, COPY, FULL]
    assert draft_levels(COPY, NONE, COPY) == [NONE, COPY]
    heads_only = generate_medusa_buffers(CUSTOM)
    assert draft_levels(heads_only, NONE, None) == [NONE, heads_only]
    assert draft_levels(NONE, NONE, None) == [NONE]


def test_step_times_drop_the_first_step_and_then_stay_fixed():
    times = StepTimes()
    for s in (9.0, 1.0, 3.0):
        times.record(1, FULL, s)
    assert times.seconds(1, FULL) is None  # not yet TIMED_STEPS timed steps
    times.record(1, FULL, 2.0)
    assert times.seconds(1, FULL) == 2.0  # median of 1, 3, 2; the first (capture) step dropped
    times.record(1, FULL, 100.0)
    assert times.seconds(1, FULL) == 2.0 and times.seconds(2, FULL) is None


def test_unmeasured_levels_are_run_first_largest_first():
    times = StepTimes()
    follower = AcceptanceFollower([NONE, COPY, FULL], times, 1)
    order = []
    for _ in range(3 * (adaptive.TIMED_STEPS + 1)):
        level = follower.choose(1, [0])
        order.append(level)
        times.record(1, follower.levels[level], 1.0)
    assert order == [2] * 4 + [1] * 4 + [0] * 4


def test_the_level_with_most_tokens_per_second_wins_and_the_full_tree_is_probed_ever_less_often():
    follower = AcceptanceFollower([NONE, COPY, FULL], timed({NONE: 1.0, COPY: 1.2, FULL: 2.0}), 2)
    for _ in range(10):  # nothing of the heads is accepted, copies give 2 tokens a step on both rows
        follower.update(2, [0, 1], accepted=[0, 0], copy_accepted=[1, 1])
    assert follower.choose(1, [0, 1]) == 1  # copies: 2 / 1.2 beats 1 / 1.0 and ~1 / 2.0
    choices = [follower.choose(1, [0, 1]) for _ in range(200)]
    probes = [i for i, level in enumerate(choices) if level == 2]
    gaps = [b - a for a, b in zip(probes, probes[1:])]
    assert gaps[:4] == [16, 32, 64, 64] and set(choices) == {1, 2}
    for _ in range(10):  # the heads start to be accepted: 4 tokens a step
        follower.update(2, [0, 1], accepted=[3, 3], copy_accepted=[1, 1])
    assert follower.choose(1, [0, 1]) == 2 and follower.probe_every == adaptive.FIRST_PROBE


def test_live_rows_decide_and_new_rows_start_from_the_prior():
    follower = AcceptanceFollower([NONE, FULL], timed({NONE: 1.0, FULL: 1.5}), 2)
    for _ in range(20):
        follower.update(1, [0, 1], accepted=[0, 4], copy_accepted=[0, 0])
    assert follower.choose(1, [0]) == 0 and follower.choose(1, [1]) == 1
    follower.reset_rows([1])
    assert follower.tokens[1][1] == adaptive.PRIOR_TOKENS
    smaller = follower.resized([NONE, FULL], [1])
    assert smaller.tokens[1] == [adaptive.PRIOR_TOKENS] and smaller.times is follower.times


def run(model, input_ids, **kwargs):
    tokens, accepted = [], []
    for out in model.medusa_generate(input_ids, eos_token_id=[], **kwargs):
        tokens += out["new_token_ids"]
        accepted.append(out["accept_length"])
    return tokens, accepted


def recording_choices(monkeypatch) -> list[int]:
    chosen = []
    choose = AcceptanceFollower.choose
    monkeypatch.setattr(AcceptanceFollower, "choose", lambda self, *a: chosen.append(choose(self, *a)) or chosen[-1])
    return chosen


def test_a_row_whose_drafts_are_not_accepted_falls_back_to_no_tree_and_stays_greedy(monkeypatch):
    base = tiny_model("llama", seed=5)
    model = random_heads(base, 3, "shared_lm_head", seed=3)
    model.tree_buffers(CUSTOM, 2, 4)  # buffers of the levels, to time them as on a CPU: verification is dear
    model.step_times = timed({model.tree_buffers("none"): 1.0, model.tree_buffers("none", 2, 4): 2.0,
                              model.tree_buffers(CUSTOM, 2, 4): 3.0})
    chosen = recording_choices(monkeypatch)
    input_ids = torch.arange(3, 40)[None]  # distinct tokens: nothing to copy at first
    tokens, accepted = run(model, input_ids, max_new_tokens=60, medusa_choices=CUSTOM, copy_chains=2, copy_depth=4,
                           adaptive=True)
    assert tokens == greedy_reference(base, input_ids, 60)
    assert chosen.count(0) > len(chosen) / 2  # mostly plain steps
    assert all(a == 0 for a, level in zip(accepted, chosen) if level == 0)


def test_accepted_drafts_keep_the_full_tree_and_stay_greedy(monkeypatch):
    model = fitted("llama", 4)
    model.step_times = timed({model.tree_buffers("none"): 1.0, model.tree_buffers("none", 2, 4): 1.1,
                              model.tree_buffers(CUSTOM, 2, 4): 1.2})
    chosen = recording_choices(monkeypatch)
    for input_ids in prompts(100, 4)[:2]:  # the heads were fitted on these
        tokens, accepted = run(model, input_ids, max_new_tokens=40, medusa_choices=CUSTOM, copy_chains=2, copy_depth=4,
                               adaptive=True)
        assert tokens == greedy_reference(model.base_model, input_ids, 40)
    assert chosen.count(2) > 0.8 * len(chosen)


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
