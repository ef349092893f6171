"""MedusaModel.fp32_logits: base logits from a float32 lm_head in every loop of a bf16 model."""

import functools

import pytest
import torch
from torch import nn

from medusa.eval.answers import drain
from tests.fitting import fitted_medusa
from tests.test_generate import CUSTOM, prompts
from tests.tiny import tiny_model

NEW_TOKENS = 32


@functools.cache
def bf16_model():
    """Fitted 3-head model (so Medusa steps accept several tokens), switched on in fp32, then cast to bf16:
    the cast must renew the fp32 copy from the rounded weights."""
    model = fitted_medusa(tiny_model("llama", seed=10), prompts(100, 4), 3, steps=200)
    model.fp32_logits = True
    return model.to(torch.bfloat16)


def reference_logits(model, hidden: torch.Tensor) -> torch.Tensor:
    """The lm_head's product in float64, from its (bf16) weight."""
    return nn.functional.linear(hidden.double(), model.lm_head.weight.double())


def test_greedy_medusa_equals_the_greedy_loop_with_fp32_logits():
    model = bf16_model()
    tokens = steps = 0
    for input_ids in prompts(100, 4)[:2] + prompts(7, 2):
        greedy, _ = drain(model.greedy_generate(input_ids, max_new_tokens=NEW_TOKENS, eos_token_id=[]))
        for tree, chains in ((None, 0), (CUSTOM, 2)):
            medusa, n = drain(model.medusa_generate(input_ids, max_new_tokens=NEW_TOKENS, medusa_choices=tree,
                                                    copy_chains=chains, adaptive=False, eos_token_id=[]))
            assert medusa == greedy
            tokens, steps = tokens + len(medusa), steps + n
    assert tokens / steps > 1.5  # the tree steps speculated


def test_every_base_logit_of_both_loops_is_the_fp32_product_of_hidden_and_lm_head(monkeypatch):
    model = bf16_model()
    seen = []
    lm_logits = model.lm_logits

    def recording(hidden):
        logits = lm_logits(hidden)
        seen.append((hidden, logits))
        return logits

    monkeypatch.setattr(model, "lm_logits", recording)
    input_ids = prompts(7, 1)[0]
    drain(model.greedy_generate(input_ids, max_new_tokens=8))
    drain(model.medusa_generate(input_ids, max_new_tokens=8, medusa_choices=CUSTOM, adaptive=False))
    assert {h.ndim for h, _ in seen} == {2, 3}  # prefill's last tokens and the steps' trees
    for hidden, logits in seen:
        assert hidden.dtype == torch.bfloat16 and logits.dtype == torch.float32
        with torch.inference_mode():  # the recorded hidden states are inference tensors
            reference = reference_logits(model, hidden)
            bf16_error = (model.lm_head(hidden).double() - reference).abs().max()
        # fp32 accumulation over 64 products errs by ~1e-7 of the terms; bf16 output rounding alone by ~4e-3.
        tolerance = 1e-5 * reference.abs().max().item()
        assert (logits.double() - reference).abs().max() < tolerance < bf16_error  # the tolerance tells them apart


def test_switching_off_gives_the_model_dtype_again():
    model = fitted_medusa(tiny_model("llama", seed=3), prompts(1, 1), 2, steps=1).to(torch.bfloat16)
    hidden = torch.randn(2, 5, 64, dtype=torch.bfloat16)
    model.fp32_logits = True
    assert model.lm_logits(hidden).dtype == torch.float32
    model.fp32_logits = False
    assert model.lm_logits(hidden).dtype == torch.bfloat16 and not model.fp32_logits


@pytest.mark.parametrize("value", [1, "yes", None])
def test_a_switch_that_is_not_a_bool_is_refused(value):
    model = fitted_medusa(tiny_model("llama", seed=3), prompts(1, 1), 2, steps=1)
    with pytest.raises(ValueError, match="fp32_logits must be True or False"):
        model.fp32_logits = value


def test_a_quantised_lm_head_is_refused():
    model = fitted_medusa(tiny_model("llama", seed=3), prompts(1, 1), 2, steps=1)
    model.lm_head.weight = nn.Parameter(torch.zeros(320, 64, dtype=torch.int8), requires_grad=False)
    with pytest.raises(ValueError, match="floating-point lm_head; this one is torch.int8"):
        model.fp32_logits = True


def test_switching_while_a_generation_is_in_progress_is_refused_and_a_switch_renews_the_pool():
    model = fitted_medusa(tiny_model("llama", seed=3), prompts(1, 1), 2, steps=1)
    stream = model.medusa_generate(prompts(5, 1)[0], max_new_tokens=8)
    next(stream)
    pool = model.cache_pool
    with pytest.raises(RuntimeError, match="while a generation is in progress"):
        model.fp32_logits = True
    stream.close()
    model.fp32_logits = True
    assert model.cache_pool is not pool and not model.cache_pool.caches  # graphs of the old logit path are gone
    model.fp32_logits = True  # again: a new copy of the weights, so new graphs too
    assert model.cache_pool is not pool


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_graph_replay_after_switching_back_and_forth_equals_the_eager_loop():
    """Graphs captured with one fp32 copy must not be replayed after the copy was dropped and taken again."""
    model = fitted_medusa(tiny_model("llama", seed=10), prompts(100, 4), 3, steps=50).cuda().to(torch.bfloat16)
    input_ids = prompts(100, 4)[0].cuda()
    expected = {}
    for on in (False, True, False, True):
        model.fp32_logits = on
        for graph in (False, True):
            tokens, _ = drain(model.medusa_generate(input_ids, max_new_tokens=NEW_TOKENS, medusa_choices=CUSTOM,
                                                    cuda_graph=graph, eos_token_id=[]))
            assert expected.setdefault(on, tokens) == tokens
