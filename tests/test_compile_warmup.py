"""compile_step="background": the uncompiled step serves while a worker thread compiles, then the compiled one.

On CPU, with dynamo's eager back end (tracing and guards without inductor's build): each test takes a
fresh model, so its pool's compiler starts empty.
"""

import logging
import threading

import pytest
import torch
from torch._dynamo.utils import counters

from medusa.model import compile_warmup
from medusa.model import generate as generate_module
from tests.test_generate import CHAIN, random_heads, run
from tests.tiny import tiny_model

# 170 + 100 tokens cross from a 256- to a 512-slot span: two variants of the default tree.
LONG = dict(max_new_tokens=100, eos_token_id=[])
SHORT = dict(max_new_tokens=20, eos_token_id=[], medusa_choices=CHAIN)  # one tree, one span: one variant


def fresh_model(seed):
    return random_heads(tiny_model("llama", seed=seed), 3, "own_lm_head", seed=seed)


def prompt(length, seed):
    return torch.randint(3, 320, (1, length), generator=torch.Generator().manual_seed(seed))


@pytest.fixture
def compiled_calls(monkeypatch):
    """The compiled step as the decode loop gets it, through a spy: one entry per call, True for the main thread."""
    monkeypatch.setattr(generate_module, "COMPILE_BACKEND", "eager")
    real = generate_module.compiled_tree_step
    calls = []

    def spy(*args, **kwargs):
        calls.append(threading.current_thread() is threading.main_thread())
        return real(*args, **kwargs)

    monkeypatch.setattr(generate_module, "compiled_tree_step", spy)
    return calls


@pytest.mark.parametrize("sampling", ["greedy", "typical"])
def test_background_compile_decodes_as_the_plain_step_then_serves_compiled(sampling, compiled_calls):
    model, input_ids = fresh_model(21), prompt(170, 21)
    kwargs = dict(LONG, sampling=sampling, adaptive=False)
    if sampling == "typical":  # the worker samples with its own generator: this one's draws stay the caller's
        kwargs |= dict(temperature=0.7, generator=torch.Generator().manual_seed(5))

    def generate(compile_step, wait=False):
        """Tokens and accept lengths; with ``wait``, each step's compile finishes before the next step."""
        if sampling == "typical":
            kwargs["generator"].manual_seed(5)
        tokens, accepted = [], []
        for out in model.medusa_generate(input_ids, compile_step=compile_step, **kwargs):
            tokens += out["new_token_ids"]
            accepted.append(out["accept_length"])
            if wait:
                model.cache_pool.compiler.wait()
        return tokens, accepted

    plain = generate(False)
    assert not compiled_calls
    assert generate("background", wait=True) == plain
    # Each variant (tree and span) was compiled once by the worker; the main thread switched at the next step.
    variants = compiled_calls.count(False)
    assert variants == 2 and compiled_calls.count(True) == len(plain[1]) - variants
    compiled_calls.clear()
    traced = counters["stats"]["unique_graphs"]
    tokens, accepted = generate("background")
    assert (tokens, accepted) == plain
    # Every step ran compiled, on the main thread, with what the worker traced: no recompile here.
    assert compiled_calls == [True] * len(accepted)
    assert counters["stats"]["unique_graphs"] == traced


def test_a_failed_compile_warns_once_and_the_plain_step_serves(monkeypatch, caplog):
    def broken(*args, **kwargs):
        raise RuntimeError("no compiler here")

    monkeypatch.setattr(generate_module, "compiled_tree_step", broken)
    model, input_ids = fresh_model(22), prompt(170, 22)
    plain = run(model, input_ids, compile_step=False, **LONG)
    with caplog.at_level(logging.INFO, logger=compile_warmup.__name__):
        for _ in range(2):  # the second call does not try the failed variants again
            assert run(model, input_ids, compile_step="background", **LONG) == plain
            model.cache_pool.compiler.wait()
    records = [r for r in caplog.records if r.name == compile_warmup.__name__]
    assert len(records) == 2 and all("no compiler here" in r.getMessage() for r in records)  # one per variant
    assert [r.levelno for r in records] == [logging.WARNING, logging.INFO]  # only the first failure warns


def test_too_little_free_memory_skips_the_compile(compiled_calls, monkeypatch, caplog):
    monkeypatch.setattr(compile_warmup, "free_memory", lambda device: 1)
    model, input_ids = fresh_model(23), prompt(12, 23)
    with caplog.at_level(logging.INFO, logger=compile_warmup.__name__):
        for _ in range(2):
            assert run(model, input_ids, compile_step="background", **SHORT) == run(model, input_ids, **SHORT)
            model.cache_pool.compiler.wait()
    assert not compiled_calls
    assert [r.getMessage().startswith("Not compiling") for r in caplog.records if r.name == compile_warmup.__name__] \
        == [True]


def test_by_default_a_cpu_model_compiles_nothing(compiled_calls):
    model = fresh_model(24)
    run(model, prompt(12, 24), **SHORT)
    run(model, prompt(12, 24), temperature=0.7, sampling="typical", **SHORT)
    run(model, prompt(12, 24), temperature=0.7, **SHORT)  # lossless: off, not refused
    assert not compiled_calls


@pytest.mark.parametrize("value", ["now", "off", 1, 0, "True"])
def test_compile_step_takes_none_true_false_or_background(value, compiled_calls):
    with pytest.raises(ValueError, match='compile_step must be None, True, False or "background"'):
        run(fresh_model(25), prompt(12, 25), compile_step=value, **SHORT)


@pytest.mark.parametrize("value", [True, "background"])
def test_lossless_sampling_refuses_a_compiled_step(value, compiled_calls):
    with pytest.raises(ValueError, match=f"compile_step={value!r} needs greedy or typical"):
        run(fresh_model(26), prompt(12, 26), compile_step=value, temperature=0.7, **SHORT)

