"""medusa_generate at temperature 0 against plain greedy decoding of the base model."""

import functools
import math
import os

import pytest
import torch

from medusa.model import MedusaConfig, MedusaKVCache, MedusaModel, cache_pool
from tests.fitting import fitted_medusa, greedy_reference
from tests.tiny import ARCHS, tiny_model, tiny_tokenizer

CHAIN = [[0], [0, 0], [0, 0, 0]]
CUSTOM = [[0], [1], [2], [0, 0], [0, 1], [1, 0], [0, 0, 0], [0, 0, 1], [0, 1, 0]]
NEW_TOKENS = 40


def prompts(seed, count=3):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randint(3, 320, (1, int(torch.randint(4, 24, (1,), generator=gen))), generator=gen) for _ in range(count)]


def run(model, input_ids, **kwargs):
    """All new tokens and the per-step accept lengths (of the tree asked for: adaptive trees off by default)."""
    kwargs.setdefault("adaptive", False)
    tokens, accepted = [], []
    for out in model.medusa_generate(input_ids, **kwargs):
        tokens += out["new_token_ids"]
        accepted.append(out["accept_length"])
    return tokens, accepted


def random_heads(base, num_heads, head_type, seed):
    model = MedusaModel(base, MedusaConfig(medusa_num_heads=num_heads, head_type=head_type))
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in model.medusa_head.parameters():
            p.normal_(0, 0.2 if p.ndim == 1 or p.shape[0] == p.shape[1] else 1.0)
    return model


@functools.cache
def fitted(arch, num_heads):
    base = tiny_model(arch, seed=10)
    return fitted_medusa(base, prompts(100, 4), num_heads, steps=200)


@pytest.mark.parametrize("arch", sorted(ARCHS))
@pytest.mark.parametrize("num_heads, head_type, tree", [(4, "own_lm_head", None), (2, "shared_lm_head", None),
                                                        (3, "own_lm_head", CHAIN), (3, "shared_lm_head", CUSTOM)])
def test_random_heads_give_exactly_greedy_output(arch, num_heads, head_type, tree):
    base = tiny_model(arch, seed=5)
    model = random_heads(base, num_heads, head_type, seed=num_heads)
    for input_ids in prompts(num_heads):
        tokens, _ = run(model, input_ids, max_new_tokens=NEW_TOKENS, medusa_choices=tree, eos_token_id=[])
        assert tokens == greedy_reference(base, input_ids, NEW_TOKENS)


@pytest.mark.parametrize("arch", sorted(ARCHS))
@pytest.mark.parametrize("tree", [None, "chain", "custom"])
def test_fitted_heads_accept_several_tokens_and_stay_greedy(arch, tree):
    model = fitted(arch, 4)
    tree = {"chain": CHAIN, "custom": CUSTOM}.get(tree)
    all_accepted = []
    # The training prompts (heads fitted there) and fresh ones (heads less sure).
    for input_ids in prompts(100, 4)[:2] + prompts(7, 2):
        tokens, accepted = run(model, input_ids, max_new_tokens=NEW_TOKENS, medusa_choices=tree, eos_token_id=[])
        assert tokens == greedy_reference(model.base_model, input_ids, NEW_TOKENS)
        all_accepted += accepted
    assert max(all_accepted) >= 2
    assert sum(a + 1 for a in all_accepted) / len(all_accepted) > 1.5  # tokens per step


def test_eos_stops_and_drops_tokens_accepted_after_it():
    model = fitted("llama", 4)
    input_ids = prompts(100, 4)[0]
    reference = greedy_reference(model.base_model, input_ids, NEW_TOKENS)
    _, accepted = run(model, input_ids, max_new_tokens=NEW_TOKENS, eos_token_id=[])
    # Take as "EOS" a token that greedy emits first in the middle of a step, not at its end, so the
    # tokens after it in that step were accepted and must be dropped.
    ends = set(torch.tensor(accepted).add(1).cumsum(0).sub(1).tolist())
    position = next(i for i, token in enumerate(reference) if i not in ends and reference.index(token) == i)
    tokens, _ = run(model, input_ids, max_new_tokens=NEW_TOKENS, eos_token_id=reference[position])
    assert tokens == reference[: position + 1]


@pytest.mark.parametrize("limit", [1, 7, 33])
def test_max_new_tokens_is_exact(limit):
    model = fitted("llama", 4)
    input_ids = prompts(100, 4)[1]
    tokens, _ = run(model, input_ids, max_new_tokens=limit, eos_token_id=[])
    assert tokens == greedy_reference(model.base_model, input_ids, limit)


def test_max_steps_bounds_the_steps():
    model = fitted("llama", 4)
    _, accepted = run(model, prompts(100, 4)[0], max_steps=3, eos_token_id=[])
    assert len(accepted) == 3


def test_streamed_text_is_the_decoded_reply():
    model = fitted("qwen2", 4)
    model.tokenizer = tiny_tokenizer()
    input_ids = prompts(100, 4)[2]
    pieces, texts, ids = [], [], []
    for out in model.medusa_generate(input_ids, max_new_tokens=NEW_TOKENS, eos_token_id=[]):
        pieces.append(out["new_text"])
        texts.append(out["text"])
        ids += out["new_token_ids"]
    decoded = model.tokenizer.decode(ids, skip_special_tokens=True)
    assert "".join(pieces) == texts[-1] == decoded
    assert all(later.startswith(earlier) for earlier, later in zip(texts, texts[1:]))


def test_sampling_is_reproducible_with_a_generator():
    model = fitted("llama", 4)
    input_ids = prompts(100, 4)[0]
    runs = [run(model, input_ids, temperature=0.8, max_new_tokens=30, eos_token_id=[],
                generator=torch.Generator().manual_seed(seed))[0] for seed in (1, 1, 2)]
    assert runs[0] == runs[1] and len(runs[0]) == 30
    assert runs[0] != runs[2]


@pytest.mark.parametrize("shape, message", [((5,), "must be \\[batch, prompt_len\\]"), ((1, 0), "empty")])
def test_bad_input_ids_are_refused(shape, message):
    model = MedusaModel(tiny_model("llama"), MedusaConfig(medusa_num_heads=2))
    with pytest.raises(ValueError, match=message):
        next(model.medusa_generate(torch.zeros(shape, dtype=torch.long)))


@pytest.mark.parametrize("input_ids, kwargs, message", [
    ([[5, 6, 7]], dict(max_new_tokens=-5), "max_new_tokens must be a positive integer; got -5"),
    ([[5, 6, 7]], dict(max_new_tokens=0), "max_new_tokens must be a positive integer; got 0"),
    ([[5, 6, 7]], dict(max_steps=-1), "max_steps must be a positive integer; got -1"),
    ([[5, 6, 7]], dict(max_steps=2.5), "max_steps must be a positive integer; got 2.5"),
    ([[5.0, 6.7, 7.0]], {}, "Token ids must be integers; got a prompt of dtype torch.float32"),
    (torch.tensor([[5.0, 6.0]]), {}, "Token ids must be integers; got a prompt of dtype torch.float32"),
    ([[5, 6], [True, False]], {}, "Token ids must be integers; got a prompt of dtype torch.bool"),
])
def test_bad_limits_and_non_integer_ids_are_refused(input_ids, kwargs, message):
    model = MedusaModel(tiny_model("llama"), MedusaConfig(medusa_num_heads=2))
    with pytest.raises(ValueError, match=message.replace(".", "\\.")):
        next(model.medusa_generate(input_ids, **kwargs))


def test_prompt_longer_than_context_is_refused():
    model = MedusaModel(tiny_model("llama", max_position_embeddings=64), MedusaConfig(medusa_num_heads=2))
    with pytest.raises(ValueError, match="context of 64 tokens"):
        next(model.medusa_generate(torch.randint(3, 320, (1, 60))))
    with pytest.raises(ValueError, match="exceeds the model's context of 64"):
        next(model.medusa_generate(torch.randint(3, 320, (1, 10)), max_new_tokens=50))


def batch_prompts(seed, count):
    """Prompts of different lengths (3 to 30 tokens) as 1-D tensors."""
    gen = torch.Generator().manual_seed(seed)
    return [torch.randint(3, 320, (int(torch.randint(3, 31, (1,), generator=gen)),), generator=gen) for _ in range(count)]


@pytest.mark.parametrize("arch", sorted(ARCHS))
@pytest.mark.parametrize("tree", [None, "custom", "none"])
def test_batch_rows_equal_each_prompt_decoded_alone(arch, tree):
    model = fitted(arch, 4)
    tree = {"custom": CUSTOM}.get(tree, tree)
    batch = batch_prompts(11, 5) + [p[0] for p in prompts(100, 4)[:2]]  # fresh prompts and two the heads know
    references = [greedy_reference(model.base_model, p[None], NEW_TOKENS) for p in batch]
    steps = []
    outputs = [[] for _ in batch]
    for rows in model.medusa_generate(batch, max_new_tokens=NEW_TOKENS, medusa_choices=tree, eos_token_id=[],
                                      adaptive=False):
        steps.append([row and row["accept_length"] for row in rows])
        for output, row in zip(outputs, rows):
            output += row["new_token_ids"] if row else []
    assert outputs == references
    # Each row accepts its own number of tokens per step.
    if tree != "none":
        assert any(len(set(step)) > 1 for step in steps)
        row_steps = [a for step in steps for a in step if a is not None]  # None: the row had finished
        assert sum(a + 1 for a in row_steps) / len(row_steps) > 1.3


def early_eos(model, batch, within):
    """An "EOS" that some rows' greedy output holds in its first ``within`` tokens and others lack (rows
    then finish at different steps), and each row's expected output with it."""
    references = [greedy_reference(model.base_model, p[None], NEW_TOKENS) for p in batch]
    counts = {}
    for ref in references:
        for token in set(ref[:within]):
            counts[token] = counts.get(token, 0) + 1
    eos = next(t for t, c in sorted(counts.items(), key=lambda kv: -kv[1]) if c < len(batch))
    return eos, [ref[: ref.index(eos) + 1] if eos in ref else ref for ref in references]


def test_finished_rows_leave_the_batch_and_the_rest_stay_greedy(monkeypatch):
    model = fitted("llama", 4)
    batch = batch_prompts(12, 7)
    eos, expected = early_eos(model, batch, 20)
    sizes = []
    copy_rows_to = MedusaKVCache.copy_rows_to
    monkeypatch.setattr(MedusaKVCache, "copy_rows_to",
                        lambda self, target, rows: sizes.append(target.batch_size) or copy_rows_to(self, target, rows))
    assert model.generate(batch, max_new_tokens=NEW_TOKENS, eos_token_id=eos) == expected
    assert len({len(e) for e in expected}) > 1 and sizes and sizes == sorted(sizes, reverse=True)
    assert all(size & (size - 1) == 0 for size in sizes)  # powers of two: few CUDA graphs


def test_batch_tensor_and_list_inputs_agree_and_reuse_the_cache():
    model = fitted("qwen2", 4)
    batch = torch.stack([p[0, :4] for p in prompts(100, 4)])
    first = model.generate(batch, max_new_tokens=12, eos_token_id=[])
    assert first == model.generate(list(batch), max_new_tokens=12, eos_token_id=[])
    assert first == [greedy_reference(model.base_model, p[None], 12) for p in batch]


@pytest.mark.parametrize("sampling", ["lossless", "typical"])
def test_batched_sampling_is_reproducible_and_respects_limits(sampling):
    model = fitted("llama", 4)
    batch = batch_prompts(13, 4)
    runs = [model.generate(batch, temperature=0.9, sampling=sampling, max_new_tokens=20, eos_token_id=[],
                           generator=torch.Generator().manual_seed(seed)) for seed in (3, 3, 4)]
    assert runs[0] == runs[1] and runs[0] != runs[2]
    assert all(len(row) == 20 for row in runs[0])


def test_steps_attend_only_over_the_filled_part_of_the_cache(monkeypatch):
    from medusa.model import generate as generate_module

    model = fitted("llama", 4)
    spans = []
    build_mask = generate_module.model_attention_mask
    monkeypatch.setattr(generate_module, "model_attention_mask",
                        lambda config, length, new_mask, positions, span, dtype: spans.append(span)
                        or build_mask(config, length, new_mask, positions, span, dtype))
    input_ids = prompts(100, 4)[0]
    tokens, _ = run(model, input_ids, max_new_tokens=600, max_steps=8, eos_token_id=[])
    capacity = model.cache_pool.caches[1].capacity
    assert capacity >= 600 and spans and max(spans) == 256  # 8 steps from a short prompt stay in the first 256 slots
    assert tokens == greedy_reference(model.base_model, input_ids, len(tokens))


@functools.cache
def inductor_builds_on_cpu() -> bool:
    """Whether torch.compile's default back end works here (on CPU it needs a C++ compiler and Python headers)."""
    try:
        torch.compile(lambda x: x * 2)(torch.ones(2))
    except Exception:  # any build failure: the machine lacks a toolchain, not a bug of ours
        return False
    return True


@pytest.mark.parametrize("sampling", ["greedy", "typical"])
def test_compiled_step_decodes_as_the_plain_one(sampling, monkeypatch):
    from torch._dynamo.utils import counters

    from medusa.model import generate as generate_module

    if not inductor_builds_on_cpu():
        monkeypatch.setattr(generate_module, "COMPILE_BACKEND", "eager")  # then check dynamo's tracing alone
    # Layers of one width share their compiled graphs whatever the sampling: another width compiles afresh.
    model = random_heads(tiny_model("llama", seed=12, hidden_size=64 if sampling == "greedy" else 72), 3,
                         "own_lm_head", seed=12)
    # 170 + 100 tokens: both trees (the default with a copy chain, 74 tokens; copy chain alone, 11) cross
    # from a 256- to a 512-slot attention span during the call.
    input_ids = torch.randint(3, 320, (1, 170), generator=torch.Generator().manual_seed(102))
    kwargs = dict(max_new_tokens=100, eos_token_id=[], sampling=sampling)
    if sampling == "typical":
        kwargs |= dict(temperature=0.7, generator=torch.Generator().manual_seed(5))
    traced = counters["stats"]["unique_graphs"]
    for tree in (None, "none"):
        compiled = run(model, input_ids, compile_step=True, medusa_choices=tree, **kwargs)
        if sampling == "typical":
            kwargs["generator"].manual_seed(5)
        assert compiled == run(model, input_ids, medusa_choices=tree, **kwargs)
        if sampling == "typical":
            kwargs["generator"].manual_seed(5)
    graphs = counters["stats"]["unique_graphs"] - traced
    assert graphs > 0  # the step went through torch.compile
    # Other cache lengths over the same spans reuse those variants (before, every step recompiled).
    run(model, input_ids[:, 7:], compile_step=True, **kwargs)
    assert counters["stats"]["unique_graphs"] - traced == graphs
    with pytest.raises(ValueError, match="compile_step=True needs greedy or typical"):
        run(model, input_ids, compile_step=True, temperature=0.7, max_new_tokens=4)


def test_compiled_step_writes_the_cache_in_place_and_compiles_draft_and_verify():
    """The compiled step writes keys and values into the shared cache buffer inside each layer's graph, in place: no
    compiled graph allocates a buffer as large as the cache (a write through a view of one layer's part at a traced
    layer index was copied back over the whole buffer). The step's work around the forward compiles as well."""
    import re

    from torch._inductor.utils import run_and_get_code

    from medusa.model import generate as generate_module

    if not inductor_builds_on_cpu():
        pytest.skip("no C++ toolchain for inductor's CPU back end")
    model = random_heads(tiny_model("llama", seed=18, hidden_size=64, num_layers=4), 3, "own_lm_head", seed=18)
    input_ids = torch.randint(3, 320, (1, 40), generator=torch.Generator().manual_seed(108))
    kwargs = dict(max_new_tokens=20, eos_token_id=[])
    plain = run(model, input_ids, compile_step=False, **kwargs)
    compiled, codes = run_and_get_code(lambda: run(model, input_ids, compile_step=True, **kwargs))
    assert compiled == plain
    config = model.base_model.config
    smallest_cache = config.num_hidden_layers * 2 * config.num_key_value_heads * 256 * config.head_dim
    allocated = [math.prod(int(n) for n in shape.split(",") if n.strip())
                 for code in codes for shape in re.findall(r"empty_strided_cpu\(\(([^)]*)\)", code)]
    assert allocated and max(allocated) < smallest_cache
    for stage in (generate_module.draft, generate_module.verify):
        assert torch._dynamo.eval_frame._debug_get_cache_entry_list(stage.__code__)


def test_one_compile_serves_every_decoder_layer(monkeypatch):
    """The graphs compiled for a step do not grow with the number of layers; outside a step nothing is compiled."""
    from torch._dynamo.utils import counters

    from medusa.model import generate as generate_module

    monkeypatch.setattr(generate_module, "COMPILE_BACKEND", "eager")
    added = {}
    for layers, hidden in ((2, 48), (6, 80)):  # other widths: no graph of one model fits the other
        model = random_heads(tiny_model("llama", seed=13, hidden_size=hidden, num_layers=layers), 3, "own_lm_head",
                             seed=13)
        input_ids = torch.randint(3, 320, (1, 30), generator=torch.Generator().manual_seed(103))
        before = counters["stats"]["unique_graphs"]
        for tree in (None, "none"):
            assert run(model, input_ids, compile_step=True, medusa_choices=tree, max_new_tokens=40, eos_token_id=[]) \
                == run(model, input_ids, compile_step=False, medusa_choices=tree, max_new_tokens=40, eos_token_id=[])
        added[layers] = counters["stats"]["unique_graphs"] - before
        base = model.base_model
        assert all(layer._compiled_call_impl is None for layer in base.model.layers)  # eager again after the step
        before = counters["stats"]["unique_graphs"]
        base(torch.randint(3, 320, (1, 9)))  # a prompt length no step had
        assert counters["stats"]["unique_graphs"] == before
    assert added[2] == added[6] > 0


def test_layers_run_compiled_only_in_the_thread_inside_compiled_layers():
    """The background compiler's worker compiles a step while the decode loop's thread runs the same layers
    uncompiled: neither may switch the other's layers."""
    import threading

    from medusa.model.compiled_layers import compiled_layers

    calls = []

    def backend(gm, example_inputs):  # records which thread runs a compiled graph
        def run_graph(*args):
            calls.append(threading.current_thread().name)
            return gm.forward(*args)
        return run_graph

    model = random_heads(tiny_model("llama", seed=16, hidden_size=40), 3, "own_lm_head", seed=16)
    base = model.base_model
    ids = torch.randint(3, 320, (1, 7), generator=torch.Generator().manual_seed(106))
    expected = base(ids).logits
    inside, release = threading.Event(), threading.Event()

    def worker():
        with compiled_layers(base, backend):
            inside.set()
            release.wait(60)

    thread = threading.Thread(target=worker, name="worker")
    thread.start()
    inside.wait(60)
    try:
        torch.testing.assert_close(base(ids).logits, expected)  # this thread: uncompiled, while the worker is inside
        assert calls == []
        with compiled_layers(base, backend):
            torch.testing.assert_close(base(ids).logits, expected)
        assert calls and set(calls) == {"MainThread"}
    finally:
        release.set()
        thread.join()
    assert all(layer._compiled_call_impl is None for layer in base.model.layers)


@pytest.mark.parametrize("arch", ["mistral", "qwen2"])
def test_compiled_layers_of_other_architectures_decode_as_the_plain_ones(arch, monkeypatch):
    from medusa.model import generate as generate_module

    monkeypatch.setattr(generate_module, "COMPILE_BACKEND", "eager")
    model = random_heads(tiny_model(arch, seed=14), 3, "own_lm_head", seed=14)
    input_ids = torch.randint(3, 320, (1, 25), generator=torch.Generator().manual_seed(104))
    kwargs = dict(max_new_tokens=30, eos_token_id=[])
    assert run(model, input_ids, compile_step=True, **kwargs) == run(model, input_ids, compile_step=False, **kwargs)


def test_a_model_that_names_no_decoder_layers_decodes_uncompiled(monkeypatch):
    from torch._dynamo.utils import counters

    from medusa.model import generate as generate_module

    monkeypatch.setattr(generate_module, "COMPILE_BACKEND", "eager")
    model = random_heads(tiny_model("llama", seed=17, hidden_size=88), 3, "own_lm_head", seed=17)
    model.base_model._no_split_modules = []
    input_ids = torch.randint(3, 320, (1, 25), generator=torch.Generator().manual_seed(107))
    before = counters["stats"]["unique_graphs"]
    kwargs = dict(max_new_tokens=20, eos_token_id=[])
    assert run(model, input_ids, compile_step=True, **kwargs) == run(model, input_ids, compile_step=False, **kwargs)
    assert counters["stats"]["unique_graphs"] == before


def test_a_failing_compile_warns_once_and_decodes_uncompiled(monkeypatch, caplog):
    from torch._dynamo.exc import BackendCompilerFailed

    from medusa.model import generate as generate_module

    calls = []

    def broken_backend(gm, example_inputs):
        calls.append(1)
        raise BackendCompilerFailed(broken_backend, RuntimeError("no toolchain"))

    monkeypatch.setattr(generate_module, "COMPILE_BACKEND", broken_backend)
    model = random_heads(tiny_model("llama", seed=15, hidden_size=56), 3, "own_lm_head", seed=15)
    input_ids = torch.randint(3, 320, (1, 25), generator=torch.Generator().manual_seed(105))
    kwargs = dict(max_new_tokens=30, eos_token_id=[])
    with caplog.at_level("WARNING", logger="medusa.model.compiled_layers"):
        assert run(model, input_ids, compile_step=True, **kwargs) == run(model, input_ids, compile_step=False, **kwargs)
        assert run(model, input_ids, compile_step=True, **kwargs) == run(model, input_ids, compile_step=False, **kwargs)
    assert len(calls) == 1  # not tried again for this model
    assert [r.message for r in caplog.records].count(caplog.records[0].message) == 1
    assert "decoding runs uncompiled" in caplog.records[0].message


def test_a_longer_call_at_least_doubles_the_pooled_cache_up_to_the_context():
    model = random_heads(tiny_model("llama", seed=11), 4, "own_lm_head", seed=11)  # fresh pool; context 1024
    input_ids = prompts(101, 1)[0]
    for max_new_tokens, capacity in ((300, 512), (400, 512), (500, 1024), (900, 1024)):
        # prompt (< 24) + 500 + tree (< 64) needs 768 slots: doubling gives 1024; 2 x 1024 would pass the context
        tokens, _ = run(model, input_ids, max_new_tokens=max_new_tokens, max_steps=3, eos_token_id=[])
        assert model.cache_pool.caches[1].capacity == capacity
        assert tokens == greedy_reference(model.base_model, input_ids, len(tokens))


@pytest.mark.parametrize("spare, capacity", [(0, 1024), (-1, 768)])
def test_the_pooled_cache_grows_only_as_needed_when_doubling_takes_over_half_the_free_memory(
        spare, capacity, monkeypatch):
    model = random_heads(tiny_model("llama", seed=12), 4, "own_lm_head", seed=12)
    input_ids = prompts(102, 1)[0]
    run(model, input_ids, max_new_tokens=300, max_steps=3, eos_token_id=[])  # < 24 + 300 + 64 slots: a pool of 512
    assert model.cache_pool.caches[1].capacity == 512
    config = model.base_model.config
    per_slot = config.num_hidden_layers * 2 * config.num_key_value_heads * config.head_dim * 4  # keys and values, fp32
    assert model.cache_pool.caches[1].bytes_per_slot() == per_slot
    # The next call needs 600-odd slots: 768 exactly, 1024 doubled; doubling may take half the free memory.
    monkeypatch.setattr(cache_pool, "free_memory", lambda device: 2 * 1024 * per_slot + spare)
    tokens, _ = run(model, input_ids, max_new_tokens=500, max_steps=3, eos_token_id=[])
    assert model.cache_pool.caches[1].capacity == capacity
    assert tokens == greedy_reference(model.base_model, input_ids, len(tokens))


def test_a_generation_started_while_another_holds_the_pooled_cache_gets_its_own():
    model = random_heads(tiny_model("llama", seed=13), 3, "own_lm_head", seed=13)  # fresh pool
    first, second = prompts(103, 2)
    stream = model.medusa_generate(first, max_new_tokens=NEW_TOKENS, eos_token_id=[], adaptive=False)
    started = next(stream)["new_token_ids"]  # the stream now holds the pool's batch-1 cache
    pooled = model.cache_pool.caches[1]
    assert pooled.in_use
    interleaved, _ = run(model, second, max_new_tokens=NEW_TOKENS, eos_token_id=[])
    assert model.cache_pool.caches == {1: pooled} and pooled.in_use  # the second call left the pool alone
    tokens = started + [t for out in stream for t in out["new_token_ids"]]
    assert not pooled.in_use
    assert tokens == greedy_reference(model.base_model, first, NEW_TOKENS)
    assert interleaved == greedy_reference(model.base_model, second, NEW_TOKENS)


@pytest.mark.parametrize("tree, batch_size, count", [(None, 3, 9), ("none", 3, 9), (None, 16, 40)])
def test_continuous_batching_refills_finished_rows_and_stays_greedy(tree, batch_size, count, monkeypatch):
    model = fitted("llama", 4)
    batch = batch_prompts(14, count)
    eos, expected = early_eos(model, batch, 15)
    refills, sizes = [], []
    copy_rows_to = MedusaKVCache.copy_rows_to

    def recording(self, target, rows, target_rows=None):
        (sizes if target_rows is None else refills).append(len(rows))
        return copy_rows_to(self, target, rows, target_rows)

    monkeypatch.setattr(MedusaKVCache, "copy_rows_to", recording)
    in_flight = []
    outputs = [[] for _ in batch]
    for rows in model.medusa_generate(batch, batch_size=batch_size, max_new_tokens=NEW_TOKENS, eos_token_id=eos,
                                      medusa_choices=tree):
        in_flight.append(sum(row is not None for row in rows))
        for output, row in zip(outputs, rows):
            output += row["new_token_ids"] if row else []
    assert outputs == expected
    assert max(in_flight) == batch_size and sum(refills) == len(batch) - batch_size  # every later prompt got a row
    # Refills wait for an eighth of the batch to be free (one prefill for several rows), except the last.
    assert all(n >= max(1, batch_size // 8) for n in refills[:-1])
    assert all(size < batch_size for size in sizes)  # once the queue is empty the batch shrinks


def test_max_steps_counts_each_prompts_own_steps():
    model = fitted("llama", 4)
    batch = batch_prompts(15, 5)
    steps = list(model.medusa_generate(batch, batch_size=2, max_steps=3, eos_token_id=[]))
    assert [sum(rows[i] is not None for rows in steps) for i in range(len(batch))] == [3] * len(batch)
    with pytest.raises(ValueError, match="batch_size must be a positive integer; got 0"):
        model.generate(batch, batch_size=0)


def test_continuous_batching_with_lossless_sampling_is_reproducible():
    model = fitted("qwen2", 4)
    batch = batch_prompts(16, 5)
    runs = [model.generate(batch, batch_size=2, temperature=0.8, max_new_tokens=15, eos_token_id=[],
                           generator=torch.Generator().manual_seed(seed)) for seed in (5, 5)]
    assert runs[0] == runs[1] and all(len(row) == 15 for row in runs[0])


@pytest.mark.parametrize("tree", [None, "none"])
def test_generation_across_a_span_boundary_stays_greedy(tree):
    model = fitted("llama", 4)
    input_ids = torch.randint(3, 320, (1, 240), generator=torch.Generator().manual_seed(17))
    tokens, _ = run(model, input_ids, max_new_tokens=NEW_TOKENS, medusa_choices=tree, eos_token_id=[])
    assert tokens == greedy_reference(model.base_model, input_ids, NEW_TOKENS)  # 240 + 40 tokens pass slot 256


def test_free_memory_reads_the_hosts_available_memory_on_cpu():
    from medusa.model.kv_cache import free_memory

    def available() -> int:  # the kernel's own figure, read independently
        with open("/proc/meminfo") as f:
            return next(int(line.split()[1]) * 1024 for line in f if line.startswith("MemAvailable:"))

    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    held = torch.ones(256 << 20, dtype=torch.uint8)  # 256 MiB, touched
    # Other processes move the figure between two reads; bracket the reading by the kernel's before and after.
    before = available()
    reading = free_memory(torch.device("cpu"))
    after = available()
    assert 0 < min(before, after) - (16 << 20) <= reading <= max(before, after) + (16 << 20) <= total
    del held


def test_a_model_cast_after_generating_decodes_in_its_new_dtype():
    """The pooled cache and tree buffers of the old dtype must not be reused (writing float64 keys into them)."""
    model = random_heads(tiny_model("llama", seed=14), 3, "own_lm_head", seed=14)
    input_ids = prompts(104, 1)[0]
    run(model, input_ids, max_new_tokens=8, medusa_choices=CUSTOM, eos_token_id=[])
    model.double()
    tokens, _ = run(model, input_ids, max_new_tokens=NEW_TOKENS, medusa_choices=CUSTOM, eos_token_id=[])
    assert model.cache_pool.caches[1].buffer.dtype == torch.float64
    assert tokens == greedy_reference(model.base_model, input_ids, NEW_TOKENS)


def test_resolve_step_defaults_to_a_compiled_graph_only_for_greedy_decoding_on_cuda():
    from medusa.model.generate import resolve_step

    assert resolve_step("cuda", "greedy") == (True, True)
    for device, sampling in (("cuda", "typical"), ("cuda", "lossless"), ("cpu", "greedy"), ("cpu", "lossless")):
        assert resolve_step(device, sampling) == (False, False)
    assert resolve_step("cuda", "greedy", compile_step=False) == (True, False)
    assert resolve_step("cpu", "typical", compile_step="background") == (False, "background")
    for device, sampling, kwargs, message in (("cpu", "greedy", dict(cuda_graph=True), "needs a CUDA model"),
                                              ("cuda", "typical", dict(cuda_graph=True), "greedy decoding"),
                                              ("cuda", "lossless", dict(compile_step=True), "lossless sampling"),
                                              ("cpu", "greedy", dict(compile_step="later"), "compile_step must be")):
        with pytest.raises(ValueError, match=message):
            resolve_step(device, sampling, **kwargs)
