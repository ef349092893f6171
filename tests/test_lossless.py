"""Lossless sampling: Medusa's output is distributed exactly as ancestral sampling from the base model.

The statistical tests compare N seeded Medusa generations of L tokens with the base model's exact
distribution over L-token continuations (enumerated, not sampled), by a chi-square test on the
first 1, 2, ..., L tokens at significance 1e-3 each. The same test must reject deliberately biased
acceptance rules, so it has the power to catch a lossy implementation.
"""

import functools

import pytest
import torch
from transformers import TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

from medusa.model import MedusaConfig, MedusaModel, posterior
from medusa.model.posterior import evaluate_posterior_lossless, rejection_chain
from medusa.model.sampling import resolve_sampling, sampling_probs
from medusa.model.tree import generate_medusa_buffers
from tests.fitting import sampled_medusa
from tests.tiny import tiny_model

VOCAB = 16
PROMPT = torch.tensor([[5, 9, 3, 12, 7]])
SMALL = [[0], [1], [0, 0], [0, 1], [1, 0]]
DEEP = [[0], [1], [2], [0, 0], [0, 1], [1, 0], [0, 0, 0], [0, 0, 1], [0, 1, 0], [0, 0, 0, 0]]
SIGNIFICANCE = 1e-3


def split(dist):
    """(base distribution, copy branch arguments) of a case."""
    copy = {k: dist[k] for k in ("copy_chains", "copy_depth") if k in dist}
    return {k: v for k, v in dist.items() if k not in copy}, copy


@functools.cache
def medusa_for(temperature, top_k=0, top_p=1.0, num_heads=4):
    base = tiny_model("llama", vocab_size=VOCAB, seed=3, hidden_size=32, num_layers=1)
    return sampled_medusa(base, PROMPT, num_heads, temperature, top_k, top_p)


# ----------------------------------------------------------------------------- one node, exactly
def output_distribution(probs, tokens, chain=rejection_chain):
    """The exact distribution of the token one node emits: an accepted child or a residual sample."""
    accept, residual = chain(probs, tokens)
    reach = torch.cat([torch.ones(1, dtype=accept.dtype), torch.cumprod(1 - accept, 0)])  # [c + 1]
    out = reach[-1] * residual / residual.sum().clamp_min(1e-300)
    return out.index_add(0, tokens, reach[:-1] * accept)


def overeager_chain(probs, tokens):
    """Biased: accepts each child 1.5 times too often."""
    accept, residual = rejection_chain(probs, tokens)
    return (1.5 * accept).clamp(max=1), residual


def unnormalised_chain(probs, tokens):
    """Biased: tests child i against p instead of the renormalised residual."""
    _, residual = rejection_chain(probs, tokens)
    return probs[tokens], residual


def hand_made_nodes():
    gen = torch.Generator().manual_seed(0)
    for _ in range(20):
        p = torch.distributions.Dirichlet(torch.full((12,), 0.5)).sample().double()
        p = p / p.sum()
        yield p, torch.randperm(12, generator=gen)[: int(torch.randint(1, 6, (1,), generator=gen))]
    p = torch.zeros(12, dtype=torch.float64)
    p[[2, 7]] = torch.tensor([0.3, 0.7], dtype=torch.float64)
    yield p, torch.tensor([7, 2])  # the children hold all the mass
    yield p, torch.tensor([7])  # the residual is one token
    yield p, torch.tensor([0, 5, 11])  # the children have no mass
    yield torch.nn.functional.one_hot(torch.tensor(4), 12).double(), torch.tensor([1, 4])


@pytest.mark.parametrize("case", range(24))
def test_one_node_emits_exactly_p(case):
    p, tokens = list(hand_made_nodes())[case]
    torch.testing.assert_close(output_distribution(p, tokens), p, rtol=0, atol=1e-12)


def test_the_exact_check_sees_biased_chains():
    p, tokens = torch.tensor([0.4, 0.3, 0.2, 0.1], dtype=torch.float64), torch.tensor([1, 2])
    for chain in (overeager_chain, unnormalised_chain):
        assert (output_distribution(p, tokens, chain) - p).abs().max() > 0.02


def test_children_with_all_the_mass_are_accepted_for_sure():
    p = torch.tensor([0.0, 0.25, 0.75, 0.0])
    accept, residual = rejection_chain(p, torch.tensor([2, 1]))
    assert accept.tolist() == [0.75, 1.0] and residual.sum() == 0


# ----------------------------------------------------------------------------- the tree walk
def test_walk_follows_sure_children_and_samples_the_bonus_from_the_residual():
    buffers = generate_medusa_buffers(DEEP)
    tokens = torch.tensor([0, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13])  # node i carries token i + 3
    gen = torch.Generator().manual_seed(0)
    # Node 1 (token 4) is certain after the root, node 4 (token 7) after node 1, then a residual
    # that can only be token 15 (node 4's children carry 10 and 11).
    logits = torch.full((11, 16), -1e4)
    logits[0, 4] = logits[1, 7] = logits[4, 15] = 0.0
    for _ in range(5):
        path, length, root = evaluate_posterior_lossless(logits, tokens, buffers, 1.0, generator=gen)
        assert int(length) == 2 and path.tolist() == [0, 1, 4, 0, 0] and int(root) == 15
    # A leaf's bonus token comes from its own distribution.
    logits[4, 15], logits[4, 10], logits[7, 12] = -1e4, 0.0, 0.0
    path, length, root = evaluate_posterior_lossless(logits, tokens, buffers, 1.0, generator=gen)
    assert path[:4].tolist() == [0, 1, 4, 7] and int(length) == 3 and int(root) == 12


def test_walk_pools_a_copy_chain_with_the_head_node_of_the_same_token():
    buffers = generate_medusa_buffers(SMALL, copy_chains=1, copy_depth=3)  # heads: nodes 1-5; chain: 6, 7, 8
    assert buffers.children[0] == (1, 2, 6) and buffers.children[6] == (7,)
    # The chain's first token equals head node 1's (4); its second (9) differs from node 1's children (6, 7).
    tokens = torch.tensor([0, 4, 5, 6, 7, 8, 4, 9, 10])
    logits = torch.full((9, 16), -1e4)
    logits[0, 4] = logits[1, 9] = logits[7, 10] = logits[8, 13] = 0.0  # node 6's logits are ignored (same prefix as 1)
    gen = torch.Generator().manual_seed(0)
    for _ in range(5):
        path, length, root = evaluate_posterior_lossless(logits, tokens, buffers, 1.0, generator=gen)
        # token 4 is accepted once (the two nodes are one prefix), then 9 below the chain's node, then 10.
        assert path.tolist() == [0, 1, 7, 8] and int(length) == 3 and int(root) == 13
    # With every child's token impossible, nothing is accepted and the bonus comes from the residual.
    logits[0] = -1e4
    logits[0, 11] = 0.0
    path, length, root = evaluate_posterior_lossless(logits, tokens, buffers, 1.0, generator=gen)
    assert int(length) == 0 and int(root) == 11


def test_tree_lists_children_in_rank_order_and_a_row_through_each_node():
    buffers = generate_medusa_buffers(DEEP)
    assert buffers.children[0] == (1, 2, 3) and buffers.children[1] == (4, 5) and buffers.children[4] == (7, 8)
    assert buffers.children[10] == ()
    for node, row in enumerate(buffers.path_row):
        depth = int(buffers.position_ids[node])
        assert buffers.retrieve_indices[row, depth] == node and buffers.path_valid[row, depth]


# ----------------------------------------------------------------------------- sampling arguments
def test_sampling_probs_match_transformers_warpers():
    gen = torch.Generator().manual_seed(1)
    logits = torch.randn(50, 40, generator=gen) * 3
    for temperature, top_k, top_p in ((0.7, 0, 1.0), (1.3, 5, 1.0), (1.0, 0, 0.8), (2.0, 10, 0.5), (0.5, 1, 1.0)):
        scores = TemperatureLogitsWarper(temperature)(None, logits)
        if top_k:
            scores = TopKLogitsWarper(top_k)(None, scores)
        if top_p < 1:
            scores = TopPLogitsWarper(top_p)(None, scores)
        torch.testing.assert_close(sampling_probs(logits, temperature, top_k, top_p), torch.softmax(scores, -1))


@pytest.mark.parametrize("sampling, temperature, expected", [
    (None, 0.0, "greedy"), (None, 0.7, "lossless"), ("typical", 0.7, "typical"), ("lossless", 1.0, "lossless"),
    ("greedy", 0.0, "greedy"),
])
def test_sampling_mode_defaults(sampling, temperature, expected):
    assert resolve_sampling(sampling, temperature) == expected


@pytest.mark.parametrize("kwargs, message", [
    (dict(sampling="nucleus", temperature=1.0), "Unknown sampling 'nucleus'; choose one of greedy, typical, lossless"),
    (dict(sampling="lossless", temperature=0.0), "sampling='lossless' needs temperature > 0"),
    (dict(sampling="greedy", temperature=0.5), "sampling='greedy' needs temperature 0"),
    (dict(temperature=-1.0), "temperature must be a finite number >= 0; got -1.0"),
    (dict(temperature=float("nan")), "temperature must be a finite number >= 0; got nan"),
    (dict(temperature=float("inf")), "temperature must be a finite number >= 0; got inf"),
    (dict(temperature=1.0, top_p=float("nan")), "top_p must be in"),
    (dict(temperature=1.0, top_k=-2), "top_k must be >= 0"),
    (dict(temperature=1.0, top_p=0.0), "top_p must be in"),
])
def test_bad_sampling_arguments_are_refused(kwargs, message):
    model = MedusaModel(tiny_model("llama", vocab_size=VOCAB), MedusaConfig(medusa_num_heads=2))
    with pytest.raises(ValueError, match=message.replace("(", "\\(").replace("[", "\\[")):
        next(model.medusa_generate(PROMPT, **kwargs))


@pytest.mark.parametrize("sampling", ["lossless", "typical"])
def test_seeded_sampling_is_reproducible(sampling):
    model = medusa_for(1.0)
    outputs = []
    for seed in (7, 7, 8):
        gen = torch.Generator().manual_seed(seed)
        outputs.append([t for out in model.medusa_generate(PROMPT, temperature=1.0, sampling=sampling, max_new_tokens=40,
                                                           eos_token_id=[], generator=gen)
                        for t in out["new_token_ids"]])
    assert outputs[0] == outputs[1] and len(outputs[0]) == 40
    assert outputs[0] != outputs[2]


# ----------------------------------------------------------------------------- statistics
def exact_distribution(base, length, **dist):
    """The base model's probability of every ``length``-token continuation of PROMPT: ``[V] * length``."""
    joint = torch.ones(1, dtype=torch.float64)
    prefixes = torch.empty(1, 0, dtype=torch.long)
    with torch.no_grad():
        for _ in range(length):
            ids = torch.cat([PROMPT.expand(len(prefixes), -1), prefixes], dim=1)
            probs = sampling_probs(base(ids).logits[:, -1], **dist).double()  # [prefixes, V]
            joint = (joint[:, None] * probs).flatten()
            prefixes = torch.cat([prefixes.repeat_interleave(VOCAB, 0), torch.arange(VOCAB).repeat(len(prefixes))[:, None]], 1)
    return joint.view([VOCAB] * length)


def medusa_samples(model, runs, length, tree, seed=0, **dist):
    """``runs`` continuations ``[runs, length]`` and every step's accept length."""
    gen = torch.Generator().manual_seed(seed)
    samples, accepted = [], []
    for _ in range(runs):
        tokens = []
        for out in model.medusa_generate(PROMPT, max_new_tokens=length, medusa_choices=tree, eos_token_id=[],
                                         generator=gen, **dist):
            tokens += out["new_token_ids"]
            accepted.append(out["accept_length"])
        samples.append(tokens)
    return torch.tensor(samples), torch.tensor(accepted)


def chi_square(samples, probs, min_expected=5.0):
    """Pearson's test of ``samples`` ``[N, k]`` against ``probs`` ``[V] * k``, cells with small
    expected counts pooled into one. Returns (statistic, degrees of freedom, p-value, TV distance)."""
    cells = (samples * VOCAB ** torch.arange(samples.shape[1] - 1, -1, -1)).sum(1)
    counts = torch.bincount(cells, minlength=probs.numel()).double()
    expected = probs.flatten() * len(samples)
    big = expected >= min_expected
    observed = torch.cat([counts[big], counts[~big].sum(0, keepdim=True)])
    expected_pooled = torch.cat([expected[big], expected[~big].sum(0, keepdim=True)])
    if expected_pooled[-1] == 0 and observed[-1] == 0:
        observed, expected_pooled = observed[:-1], expected_pooled[:-1]
    statistic = ((observed - expected_pooled) ** 2 / expected_pooled).sum()
    df = len(observed) - 1
    p_value = torch.special.gammaincc(torch.tensor(df / 2, dtype=torch.float64), statistic / 2)
    tv = 0.5 * (counts / len(samples) - probs.flatten()).abs().sum()
    return float(statistic), df, float(p_value), float(tv)


def prefix_tests(samples, joint):
    """chi_square on the first 1, 2, ..., k tokens."""
    k = samples.shape[1]
    return [chi_square(samples[:, :j], joint.sum(dim=tuple(range(j, k))) if j < k else joint) for j in range(1, k + 1)]


CASES = {  # name: (tree, tokens, runs, base distribution and copy branches)
    "small-tree": (SMALL, 3, 3000, dict(temperature=1.0, copy_chains=0)),
    "small-tree-top-k": (SMALL, 3, 3000, dict(temperature=3.0, top_k=3, copy_chains=0)),
    "deep-tree-top-p": (DEEP, 4, 3000, dict(temperature=1.5, top_p=0.9, copy_chains=0)),
    # Copy chains whose tokens often repeat a head node's beside them (a 16-token vocabulary).
    "small-tree-copy-chains": (SMALL, 4, 3000, dict(temperature=1.0, copy_chains=2, copy_depth=3)),
    "copy-chains-only": ("none", 4, 3000, dict(temperature=0.7, copy_chains=2, copy_depth=3)),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_lossless_matches_ancestral_sampling(case):
    tree, length, runs, dist = CASES[case]
    base_dist, _ = split(dist)
    model = medusa_for(**base_dist)
    joint = exact_distribution(model.base_model, length, **base_dist)
    samples, accepted = medusa_samples(model, runs, length, tree, **dist)
    results = prefix_tests(samples, joint)
    rate = float((accepted > 0).double().mean())
    print(f"\n{case}: steps accepting >= 1 token {rate:.2f}, accept lengths {torch.bincount(accepted).tolist()}")
    for j, (statistic, df, p_value, tv) in enumerate(results, 1):
        print(f"  first {j} tokens: chi2 {statistic:.1f} (df {df}), p {p_value:.3g}, TV {tv:.4f}")
    assert 0.1 < rate < 0.9  # drafts are often right and often wrong: both branches are exercised
    assert max(accepted) >= 2
    assert all(p_value > SIGNIFICANCE for _, _, p_value, _ in results)


@pytest.mark.parametrize("chain", [overeager_chain, unnormalised_chain])
def test_biased_acceptance_fails_the_same_check(chain, monkeypatch):
    tree, length, runs, dist = CASES["small-tree"]
    base_dist, _ = split(dist)
    model = medusa_for(**base_dist)
    joint = exact_distribution(model.base_model, length, **base_dist)
    monkeypatch.setattr(posterior, "rejection_chain", chain)
    samples, _ = medusa_samples(model, runs, length, tree, **dist)
    results = prefix_tests(samples, joint)
    for j, (statistic, df, p_value, tv) in enumerate(results, 1):
        print(f"\n{chain.__name__}, first {j} tokens: chi2 {statistic:.1f} (df {df}), p {p_value:.3g}, TV {tv:.4f}")
    assert results[-1][2] < SIGNIFICANCE
