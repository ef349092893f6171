"""Tree-masked forwards through the library's KV cache against the stock model's own forward."""

import inspect

import pytest
import torch

from medusa.model import CacheCapacityError, MedusaConfig, MedusaKVCache, MedusaModel, generate_medusa_buffers, presets
from medusa.model.generate import prefill as prefill_prompts
from medusa.model.masks import model_attention_mask

from tests.tiny import ARCHS, tiny_model

PROMPT_LEN = 20  # longer than the Mistral model's sliding window (12), so the window matters


def forward_into_cache(model, tokens, new_mask, positions, cache):
    """Logits ``[q, V]`` of ``tokens`` written after ``cache.length`` (batch of one) with the library's 4D mask."""
    mask = model_attention_mask(model.config, cache.length, new_mask, positions[None], cache.capacity, torch.float32)
    cache_kwarg = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
    return model(input_ids=tokens[None], attention_mask=mask, position_ids=positions[None], **{cache_kwarg: cache}).logits[0]


def prefill(model, prompt, capacity):
    cache = MedusaKVCache.for_model(model, capacity)
    n = prompt.shape[0]
    logits = forward_into_cache(model, prompt, torch.ones(n, n, dtype=torch.bool).tril(), torch.arange(n), cache)
    cache.commit(n)
    return cache, logits


def random_tree_tokens(buffers, vocab, generator):
    return torch.randint(3, vocab, (buffers.num_nodes,), generator=generator)


@pytest.mark.parametrize("arch", sorted(ARCHS))
def test_prefill_matches_plain_forward(arch):
    model = tiny_model(arch, seed=1)
    prompt = torch.randint(3, 320, (PROMPT_LEN,), generator=torch.Generator().manual_seed(1))
    _, logits = prefill(model, prompt, 64)
    with torch.no_grad():
        reference = model(prompt[None]).logits[0]
    torch.testing.assert_close(logits, reference, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("arch", sorted(ARCHS))
@pytest.mark.parametrize("tree", ["mc_sim_7b_63", "chain", "custom"])
def test_tree_forward_matches_each_path_run_alone(arch, tree):
    paths = {"chain": [[0], [0, 0], [0, 0, 0]], "custom": [[0], [1], [2], [0, 0], [0, 1], [1, 0], [0, 0, 3]]}.get(tree)
    buffers = generate_medusa_buffers(paths or presets()[tree])
    model = tiny_model(arch, seed=2)
    gen = torch.Generator().manual_seed(hash(arch + tree) % 1000)
    prompt = torch.randint(3, 320, (PROMPT_LEN,), generator=gen)
    tokens = random_tree_tokens(buffers, 320, gen)
    with torch.no_grad():
        cache, _ = prefill(model, prompt, PROMPT_LEN + buffers.num_nodes)
        tree_logits = forward_into_cache(model, tokens, buffers.attn_mask, PROMPT_LEN + buffers.position_ids, cache)
        for node in range(buffers.num_nodes):
            ancestors = torch.nonzero(buffers.attn_mask[node]).flatten()  # sorted: root first, node last
            sequence = torch.cat([prompt, tokens[ancestors]])
            reference = model(sequence[None]).logits[0, -1]
            torch.testing.assert_close(tree_logits[node], reference, rtol=1e-4, atol=1e-4)


def cache_contents(cache, length):
    return [(layer.keys[:, :, :length], layer.values[:, :, :length]) for layer in cache.layers]


@pytest.mark.parametrize("arch", sorted(ARCHS))
def test_compaction_equals_fresh_forward_over_accepted_sequence(arch):
    buffers = generate_medusa_buffers(presets()["mc_sim_7b_63"])
    model = tiny_model(arch, seed=3)
    gen = torch.Generator().manual_seed(3)
    prompt = torch.randint(3, 320, (PROMPT_LEN,), generator=gen)
    tokens = random_tree_tokens(buffers, 320, gen)
    with torch.no_grad():
        for trial in range(4):
            leaf = torch.randint(0, buffers.retrieve_indices.shape[0], (1,), generator=gen).item()
            path = buffers.retrieve_indices[leaf]
            valid = int(buffers.path_valid[leaf].sum())
            num_accepted = torch.randint(0, valid, (1,), generator=gen).item()  # accepted non-root tokens
            cache, _ = prefill(model, prompt, 2 * PROMPT_LEN + buffers.num_nodes)
            forward_into_cache(model, tokens, buffers.attn_mask, PROMPT_LEN + buffers.position_ids, cache)
            cache.accept(path[None], torch.tensor([num_accepted + 1]), tokens[path][None])
            accepted = torch.cat([prompt, tokens[path[: num_accepted + 1]]])
            assert cache.length == accepted.shape[0]
            fresh = model(accepted[None], use_cache=True).past_key_values
            for layer, (keys, values) in enumerate(cache_contents(cache, int(cache.length))):
                # A sliding-window model's DynamicCache keeps only the last window - 1 entries.
                kept = fresh.layers[layer].keys.shape[-2]
                torch.testing.assert_close(keys[:, :, -kept:], fresh.layers[layer].keys, rtol=1e-5, atol=1e-5)
                torch.testing.assert_close(values[:, :, -kept:], fresh.layers[layer].values, rtol=1e-5, atol=1e-5)
                assert kept == cache.length or (arch == "mistral" and kept >= 11)


def test_capacity_overflow_raises_before_any_write():
    base = tiny_model("llama", seed=4)
    model = MedusaModel(base, MedusaConfig(medusa_num_heads=2))
    with torch.no_grad():
        cache, _ = prefill(base, torch.randint(3, 320, (10,)), 12)
    snapshot = [(k.clone(), v.clone()) for k, v in cache_contents(cache, cache.capacity)]
    with pytest.raises(CacheCapacityError, match="10 tokens cached \\+ 3 new > capacity 12"):
        cache.check_capacity(3)  # what the decode loop asks before each step's forward
    with pytest.raises(CacheCapacityError):
        cache.commit(3)
    assert cache.length == 10
    for (k, v), (k0, v0) in zip(cache_contents(cache, cache.capacity), snapshot):
        assert k.equal(k0) and v.equal(v0)
    empty = MedusaKVCache.for_model(base, 8)
    snapshot = [(k.clone(), v.clone()) for k, v in cache_contents(empty, empty.capacity)]
    with pytest.raises(CacheCapacityError, match="0 tokens cached \\+ 10 new > capacity 8"), torch.no_grad():
        prefill_prompts(model, [torch.randint(3, 320, (10,))], empty)
    for (k, v), (k0, v0) in zip(cache_contents(empty, empty.capacity), snapshot):
        assert k.equal(k0) and v.equal(v0)
