"""Acceptance rules on hand-made distributions."""

import math

import pytest
import torch

from medusa.model.posterior import evaluate_posterior_greedy, evaluate_posterior_typical, typical_threshold


def entropy(p):
    return -sum(x * math.log(x) for x in p if x > 0)


def one_step(p, candidate, temperature=1.0, **kwargs):
    """Typical acceptance of one candidate token after a position whose distribution is ``p``."""
    logits = torch.log(torch.tensor([p, p], dtype=torch.float64)) * temperature  # [depth + 1 = 2, V]
    best, length = evaluate_posterior_typical(logits[None], torch.tensor([[0, candidate]]),
                                              torch.ones(1, 2, dtype=torch.bool), temperature, **kwargs)
    return int(length)


ALPHA_BINDS = [0.28, 0.28, 0.28, 0.08, 0.04, 0.04]  # 0.3 * exp(-H) = 0.065 < epsilon = 0.09
EPSILON_BINDS = [0.9, 0.05, 0.05]  # 0.3 * exp(-H) = 0.20 > 0.09


def test_threshold_is_the_formula():
    for p, expected in ((ALPHA_BINDS, 0.3 * math.exp(-entropy(ALPHA_BINDS))), (EPSILON_BINDS, 0.09)):
        got = typical_threshold(torch.tensor(p, dtype=torch.float64), 0.09, 0.3)
        assert got.item() == pytest.approx(expected, rel=1e-9)
    assert 0.3 * math.exp(-entropy(ALPHA_BINDS)) == pytest.approx(0.0650, abs=5e-4)


@pytest.mark.parametrize(
    "p, candidate, accepted",
    [
        (ALPHA_BINDS, 3, 1),  # 0.08 > 0.065 (alpha binds): accepted although below epsilon
        (ALPHA_BINDS, 4, 0),  # 0.04 < 0.065
        (EPSILON_BINDS, 0, 1),
        (EPSILON_BINDS, 1, 0),  # 0.05 < 0.09 = epsilon, although below alpha * exp(-H)
    ],
)
def test_typical_accepts_and_rejects_by_the_formula(p, candidate, accepted):
    assert one_step(p, candidate) == accepted


def test_threshold_and_alpha_are_honoured():
    p = [0.5, 0.42, 0.08]  # 0.3 * exp(-H) = 0.120; threshold min(0.09, 0.120) = 0.09
    assert one_step(p, 2) == 0
    assert one_step(p, 2, posterior_threshold=0.05) == 1
    assert one_step(p, 2, posterior_alpha=0.1) == 1  # 0.1 * exp(-H) = 0.040


def test_temperature_sharpens_before_the_test():
    p = torch.tensor([0.6, 0.3, 0.1])
    logits = torch.log(p)
    # At temperature 0.5 the distribution is p^2 / sum(p^2) = [0.783, 0.196, 0.022]: token 2 drops below.
    for temperature, accepted in ((1.0, 1), (0.5, 0)):
        _, length = evaluate_posterior_typical(torch.stack([logits, logits])[None], torch.tensor([[0, 2]]),
                                               torch.ones(1, 2, dtype=torch.bool), temperature)
        assert int(length) == accepted


def test_typical_tests_against_the_cut_distribution():
    logits = torch.log(torch.tensor([0.5, 0.3, 0.2])).expand(2, 3)
    # Token 2 (0.2 > 0.09) is accepted; outside the top 2, or outside the nucleus of 0.7, it has p = 0.
    for kwargs, accepted in (({}, 1), ({"top_k": 2}, 0), ({"top_p": 0.7}, 0), ({"top_p": 0.9}, 1)):
        _, length = evaluate_posterior_typical(logits[None], torch.tensor([[0, 2]]), torch.ones(1, 2, dtype=torch.bool),
                                               1.0, **kwargs)
        assert int(length) == accepted, kwargs


def test_typical_prefers_longest_then_most_likely_path():
    # Vocabulary of 4; every position has the same distribution.
    p = torch.tensor([0.4, 0.35, 0.2, 0.05])
    logits = torch.log(p).expand(3, 3, 4)  # [paths, depth + 1, V]
    candidates = torch.tensor([
        [0, 1, 3],  # accepts 1 (0.05 rejected)
        [0, 2, 2],  # accepts 2, log-likelihood log 0.2 + log 0.2
        [0, 1, 0],  # accepts 2, log 0.35 + log 0.4: the most likely of the longest
    ])
    best, length = evaluate_posterior_typical(logits, candidates, torch.ones(3, 3, dtype=torch.bool), 1.0)
    assert (int(best), int(length)) == (2, 2)


def test_padding_is_never_accepted():
    p = torch.tensor([0.7, 0.2, 0.1])
    logits = torch.log(p).expand(1, 3, 3)
    valid = torch.tensor([[True, True, False]])
    _, length = evaluate_posterior_typical(logits, torch.tensor([[0, 0, 0]]), valid, 1.0)
    assert int(length) == 1
    _, length = evaluate_posterior_greedy(logits.argmax(-1), torch.tensor([[0, 0, 0]]), valid)
    assert int(length) == 1


def test_greedy_accepts_while_candidates_equal_the_argmax():
    gen = torch.Generator().manual_seed(0)
    for _ in range(50):
        paths, depth, vocab = 6, 4, 5
        logits = torch.randn(paths, depth + 1, vocab, generator=gen)
        candidates = torch.randint(0, vocab, (paths, depth + 1), generator=gen)
        matches = torch.rand(paths, depth + 1, generator=gen) < 0.6
        candidates[:, 1:] = torch.where(matches[:, 1:], logits[:, :-1].argmax(-1), candidates[:, 1:])
        best, length = evaluate_posterior_greedy(logits.argmax(-1), candidates, torch.ones(paths, depth + 1, dtype=torch.bool))
        expected = []
        for row in range(paths):  # brute force
            n = 0
            while n < depth and candidates[row, n + 1] == logits[row, n].argmax():
                n += 1
            expected.append(n)
        assert int(length) == max(expected) and expected[int(best)] == max(expected)


@pytest.mark.parametrize("depth", [0, 1, 5])
def test_leading_accepted_counts_the_accepted_prefix(depth):
    """Against a loop over each row; every row ends after its first rejection, however many accepts follow it."""
    from medusa.model.posterior import leading_accepted

    accept = torch.rand(7, 9, depth, generator=torch.Generator().manual_seed(depth)) < 0.7
    accept[0, 0] = True  # a row accepted to the end
    expected = torch.tensor([[next((i for i, a in enumerate(row) if not a), depth) for row in rows.tolist()]
                             for rows in accept])
    got = leading_accepted(accept)
    assert got.dtype == torch.long and torch.equal(got, expected)
    if depth:
        assert expected.unique().numel() > 1  # the draw exercises more than one length
