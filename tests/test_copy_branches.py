"""Copy branches (prompt lookup in the tree): the device-side n-gram search against a brute-force one,
their tree buffers against a brute-force construction, and greedy decoding with them against plain greedy."""

import pytest
import torch

from medusa.model import generate_medusa_buffers
from medusa.model.candidates import copy_candidates, copy_match
from tests.fitting import greedy_reference
from tests.test_generate import CUSTOM, fitted, prompts, random_heads, run
from tests.tiny import ARCHS, tiny_model


def brute_force_matches(text: list[int], max_ngram: int = 3) -> list[tuple[int, int]]:
    """``(n, p)`` for every end position p before the text's last token where its last n >= 1 tokens occur (n up to
    ``max_ngram``, as long as they match), best first: the longest match, then the latest."""
    n_text = len(text)
    scored = []
    for p in range(n_text - 1):  # end positions before the text's last token
        n = 0
        while n < max_ngram and p - n >= 0 and n_text - 1 - n >= 0 and text[p - n] == text[n_text - 1 - n]:
            n += 1
        if n:
            scored.append((n, p))
    return sorted(scored, reverse=True)


def brute_force_copies(text: list[int], chains: int, depth: int, max_ngram: int = 3) -> list[list[int]]:
    """Continuations of the ``chains`` best earlier matches of the text's last 1..max_ngram tokens (fewer than
    ``chains`` when fewer match). A continuation running past the text repeats the text's last token."""
    best = brute_force_matches(text, max_ngram)[:chains]
    return [[text[min(p + 1 + j, len(text) - 1)] for j in range(depth)] for _, p in best]


@pytest.mark.parametrize("seed", range(12))
def test_copy_candidates_equal_a_brute_force_ngram_search(seed):
    gen = torch.Generator().manual_seed(seed)
    batch, span = 5, 48
    vocab = int(torch.randint(2, 9, (1,), generator=gen))  # small vocabularies: many matches of every size
    chains, depth = int(torch.randint(1, 4, (1,), generator=gen)), int(torch.randint(1, 7, (1,), generator=gen))
    text = torch.randint(0, vocab, (batch, span), generator=gen)
    length = torch.randint(0, span - 1, (batch,), generator=gen)
    length[0] = 0  # the root alone: nothing to match
    copies = copy_candidates(text, length, chains, depth)
    assert copies.shape == (batch, chains, depth)
    # A finished row longer than the live rows' span (waiting to leave the batch) is searched without error.
    long_row = length.clone()
    long_row[1] = span + 7
    torch.testing.assert_close(copy_candidates(text, long_row, chains, depth)[2:], copies[2:])
    matches = copy_match(text, length)
    for b in range(batch):
        row = text[b, : int(length[b]) + 1].tolist()
        expected = brute_force_copies(row, chains, depth)
        assert copies[b, : len(expected)].tolist() == expected
        assert matches[b] == max((n for n, _ in brute_force_matches(row)), default=0)


def test_copy_candidates_take_the_longest_then_the_latest_match():
    text = torch.tensor([[7, 8, 9, 1, 8, 9, 2, 3, 8, 9, 5, 7, 8, 9]])
    # The text's end "7 8 9" (positions 11-13; the root is 13) occurs whole at 0-2; "8 9" also at 4-5 and 8-9.
    copies = copy_candidates(text, torch.tensor([13]), chains=3, depth=2)
    assert copies[0].tolist() == [[1, 8], [5, 7], [2, 3]]


def brute_force_copy_tree(num_head_paths: int, chains: int, depth: int):
    """Visible sets and positions of the chain nodes, numbered after the head nodes."""
    first = num_head_paths + 1
    visible, position = {}, {}
    for c in range(chains):
        for j in range(depth):
            node = first + c * depth + j
            visible[node] = {0} | {first + c * depth + i for i in range(j + 1)}
            position[node] = j + 1
    return visible, position


@pytest.mark.parametrize("paths, chains, depth", [(CUSTOM, 1, 10), (CUSTOM, 2, 4), ([], 1, 5), ([], 3, 2), ([[0]], 1, 1)])
def test_copy_chain_buffers_match_brute_force(paths, chains, depth):
    buffers = generate_medusa_buffers(paths, copy_chains=chains, copy_depth=depth)
    plain = generate_medusa_buffers(paths) if paths else None
    n_heads = len(paths)
    assert buffers.num_nodes == 1 + n_heads + chains * depth
    if plain is not None:  # the head part is the tree without chains
        torch.testing.assert_close(buffers.attn_mask[: n_heads + 1, : n_heads + 1], plain.attn_mask)
        assert buffers.tree_indices[: n_heads + 1].tolist() == plain.tree_indices.tolist()
    visible, position = brute_force_copy_tree(n_heads, chains, depth)
    flat_start = 1 + buffers.head_depth * buffers.top_k
    for node, seen in visible.items():
        assert set(torch.nonzero(buffers.attn_mask[node]).flatten().tolist()) == seen
        assert int(buffers.position_ids[node]) == position[node]
        assert int(buffers.tree_indices[node]) == flat_start + node - n_heads - 1
    chain_rows = [row[: depth + 1] for row in buffers.retrieve_indices.tolist()[-chains:]]
    assert chain_rows == [[0] + list(range(n_heads + 1 + c * depth, n_heads + 1 + (c + 1) * depth)) for c in range(chains)]
    assert buffers.depth == max(depth, buffers.head_depth)
    assert buffers.children[0][-chains:] == tuple(n_heads + 1 + c * depth for c in range(chains))


def repetitive_prompt(seed: int) -> torch.Tensor:
    """A prompt that repeats a random phrase, as a document quoted in a question does."""
    gen = torch.Generator().manual_seed(seed)
    phrase = torch.randint(3, 320, (12,), generator=gen)
    return torch.cat([phrase, torch.randint(3, 320, (5,), generator=gen), phrase[:4]])[None]


@pytest.mark.parametrize("arch", sorted(ARCHS))
@pytest.mark.parametrize("tree, chains, depth", [(None, 1, 10), ("none", 1, 10), (CUSTOM, 2, 4), ("none", 3, 6)])
def test_greedy_with_copy_branches_equals_plain_greedy(arch, tree, chains, depth):
    base = tiny_model(arch, seed=5)
    model = random_heads(base, 3, "shared_lm_head", seed=3)
    all_accepted = []
    for input_ids in [repetitive_prompt(1), repetitive_prompt(2)] + prompts(9, 2):
        tokens, accepted = run(model, input_ids, max_new_tokens=48, medusa_choices=tree, eos_token_id=[],
                               copy_chains=chains, copy_depth=depth)
        assert tokens == greedy_reference(base, input_ids, 48)
        all_accepted += accepted
    # Random heads rarely guess right; copies of the repeated phrase (and of the model's own loops) do.
    assert max(all_accepted) > 3


@pytest.mark.parametrize("arch", sorted(ARCHS))
def test_copy_chains_beside_fitted_heads_proposing_the_same_tokens_stay_greedy(arch):
    # Fitted heads guess the model's own continuation, so the chain often repeats a head path's tokens.
    model = fitted(arch, 4)
    for input_ids in prompts(100, 4)[:2]:
        with_copies, accepted = run(model, input_ids, max_new_tokens=40, eos_token_id=[], copy_chains=2, copy_depth=6)
        heads_only, _ = run(model, input_ids, max_new_tokens=40, eos_token_id=[], copy_chains=0)
        assert with_copies == heads_only == greedy_reference(model.base_model, input_ids, 40)


def test_nothing_to_copy_decodes_one_token_per_step_and_stays_greedy():
    # A prompt of distinct tokens and a single token to decode: the chain has no match to follow.
    base = tiny_model("llama", seed=5)
    model = random_heads(base, 3, "shared_lm_head", seed=3)
    input_ids = torch.arange(3, 40)[None]
    tokens, accepted = run(model, input_ids, max_new_tokens=1, medusa_choices="none", eos_token_id=[], copy_chains=1,
                           copy_depth=10)
    assert tokens == greedy_reference(base, input_ids, 1) and accepted == [0]


@pytest.mark.parametrize("kwargs, message", [(dict(copy_chains=-1), "copy_chains must be a non-negative integer"),
                                             (dict(copy_chains=1, copy_depth=0), "copy_depth must be at least 1"),
                                             (dict(copy_depth=2.5), "copy_depth must be a non-negative integer")])
def test_bad_copy_arguments_are_refused(kwargs, message):
    model = random_heads(tiny_model("llama", seed=5), 2, "shared_lm_head", seed=3)
    with pytest.raises(ValueError, match=message):
        next(model.medusa_generate(torch.tensor([[5, 6, 7]]), **kwargs))
