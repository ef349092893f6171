"""Grouped-query attention without repeating the KV cache: equal to Hugging Face's SDPA path."""

import json

import pytest
import torch
from transformers.integrations.sdpa_attention import sdpa_attention_forward

from medusa.model import attention
from medusa.model.attention import grouped_query_attention, grouped_sdpa_attention
from tests.fitting import greedy_reference
from tests.test_generate import random_heads, run
from tests.tiny import tiny_model


class Layer(torch.nn.Module):
    def __init__(self, groups):
        super().__init__()
        self.num_key_value_groups, self.is_causal = groups, True


def inputs(batch, kv_heads, groups, q_len, kv_len, mask_kind, seed):
    gen = torch.Generator().manual_seed(seed)
    query = torch.randn(batch, kv_heads * groups, q_len, 16, generator=gen)
    key, value = (torch.randn(batch, kv_heads, kv_len, 16, generator=gen) for _ in range(2))
    allowed = torch.rand(batch, 1, q_len, kv_len + 8, generator=gen) < 0.7  # wider than the keys, as a span
    allowed[..., 0] = True  # every query sees at least one key
    mask = allowed if mask_kind == "bool" else torch.zeros(allowed.shape).masked_fill(~allowed, torch.finfo(torch.float32).min)
    return query, key, value, mask


@pytest.fixture
def always_fold(monkeypatch):
    monkeypatch.setattr(attention, "FOLD_MIN_BYTES", 0)


@pytest.mark.parametrize("groups, q_len, mask_kind", [(3, 1, "float"), (3, 7, "float"), (2, 64, "bool"), (4, 5, "bool")])
def test_folded_heads_equal_repeated_key_values(groups, q_len, mask_kind, always_fold):
    query, key, value, mask = inputs(3, 2, groups, q_len, 40, mask_kind, seed=groups * 100 + q_len)
    expected, _ = sdpa_attention_forward(Layer(groups), query, key, value, mask[..., :40], scaling=0.3)
    got, weights = grouped_sdpa_attention(Layer(groups), query, key, value, mask, scaling=0.3)
    assert weights is None and got.shape == (3, q_len, 2 * groups, 16)  # [batch, q, heads, head_dim]
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_cases_it_does_not_fold_go_to_hugging_face_unchanged(monkeypatch):
    query, key, value, mask = inputs(2, 2, 3, 4, 12, "float", seed=5)
    calls = []
    monkeypatch.setattr(attention, "sdpa_attention_forward", lambda *a, **k: calls.append(k) or ("hf", None))
    # 2 x (3 - 1) x 2 x 2 x 12 x 16 fp32 values = 12,288 bytes that repeat_kv would add
    monkeypatch.setattr(attention, "FOLD_MIN_BYTES", 12_289)
    assert grouped_sdpa_attention(Layer(3), query, key, value, mask)[0] == "hf"  # a small copy: not worth folding
    monkeypatch.setattr(attention, "FOLD_MIN_BYTES", 12_288)
    assert grouped_sdpa_attention(Layer(3), query, key, value, mask)[0].shape == (2, 4, 6, 16)
    for args, kwargs in [((None,), {}),  # no mask: HF's causal path
                         ((mask.expand(-1, 6, -1, -1),), {}),  # one mask per head
                         ((mask,), {"dropout": 0.1}), ((mask,), {"softcap": 30.0})]:
        assert grouped_sdpa_attention(Layer(3), query, key, value, *args, **kwargs)[0] == "hf"
    ungrouped = torch.randn(2, 2, 4, 16)
    assert grouped_sdpa_attention(Layer(1), ungrouped, key, value, mask)[0] == "hf"
    assert len(calls) == 6
    monkeypatch.setattr(attention, "FOLD_MIN_BYTES", 0)
    # a query as long as 2 x head_dim x kv_heads: the mask's tiling would add as many bytes as the copy
    for q_len, expected in ((63, (2, 63, 6, 16)), (64, "hf")):
        query, key, value, mask = inputs(2, 2, 3, q_len, 12, "float", seed=6)
        out = grouped_sdpa_attention(Layer(3), query, key, value, mask[..., :12])[0]
        assert out == expected if expected == "hf" else out.shape == expected


@pytest.mark.parametrize("arch", ["llama", "qwen2", "mistral"])
def test_decoding_with_fold_gqa_attends_with_folded_heads_and_restores_the_model(arch, monkeypatch, always_fold):
    model = random_heads(tiny_model(arch, seed=21), 3, "own_lm_head", seed=21)  # 4 query heads over 2 kv heads
    assert model.base_model.config._attn_implementation == "sdpa"
    folded = []
    fold = attention.grouped_sdpa_attention
    monkeypatch.setitem(attention.AttentionInterface._global_mapping, attention.NAME,
                        lambda *a, **k: folded.append(a[1].shape[2]) or fold(*a, **k))
    input_ids = torch.randint(3, 320, (1, 19), generator=torch.Generator().manual_seed(3))
    # Heads only: with copy branches the tree's tiled mask would outweigh this tiny model's key/value copy.
    plain = run(model, input_ids, max_new_tokens=24, eos_token_id=[], copy_chains=0)
    assert not folded  # off by default
    monkeypatch.setattr(attention, "sdpa_attention_forward", None)  # every decoding forward folds
    tokens, accepted = run(model, input_ids, max_new_tokens=24, eos_token_id=[], fold_gqa=True, copy_chains=0)
    monkeypatch.undo()
    assert (tokens, accepted) == plain
    assert tokens == greedy_reference(model.base_model, input_ids, 24)  # HF generate: its own SDPA path
    assert {19} < set(folded) and max(folded) > 1  # the prefill and the tree steps
    assert model.base_model.config._attn_implementation == "sdpa"


def test_models_not_on_sdpa_are_left_alone():
    model = tiny_model("llama", seed=2)
    model.config._attn_implementation = "eager"
    with grouped_query_attention(model.config):
        assert model.config._attn_implementation == "eager"
    with pytest.raises(RuntimeError):
        model.config._attn_implementation = "sdpa"
        with grouped_query_attention(model.config):
            assert model.config._attn_implementation == attention.NAME
            raise RuntimeError
    assert model.config._attn_implementation == "sdpa"


def test_attention_benchmark_runs_both_ways_on_cpu(tmp_path):
    from benchmarks.attention_ab import main

    main(["--shape", "tiny", "--device", "cpu", "--prompt-len", "12", "--new-tokens", "6", "--batch-size", "3",
          "--output", str(tmp_path / "ab.json")])
    result = json.loads((tmp_path / "ab.json").read_text())
    for name in ("folded", "repeat_kv"):
        assert set(result[name]) == {"greedy_b1_ms", "medusa_b1_ms", "greedy_b3_ms"}
        assert all(ms > 0 for ms in result[name].values())
    assert attention.FOLD_MIN_BYTES > 0
