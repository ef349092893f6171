"""Helpers the benchmark scripts share: timing with device synchronisation, batched timed generation,
the decode loop's per-step overhead, and host-memory peaks."""

import importlib.util
import json
import time
from types import ModuleType

import torch

from medusa.eval.answers import drain
from medusa.eval.random_model import random_medusa


# ----------------------------------------------------------------------------- output
def print_and_save(result: dict, path: str | None) -> None:
    """Print a benchmark's JSON result, and write it to ``path`` when one is given."""
    print(json.dumps(result, indent=1))
    if path:
        with open(path, "w") as f:
            json.dump(result, f, indent=1)


# ----------------------------------------------------------------------------- timing
def timed(fn):
    """``(fn(), seconds)``, with the GPU (if any) synchronised before and after."""
    synchronize = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)
    synchronize()
    start = time.perf_counter()
    out = fn()
    synchronize()
    return out, time.perf_counter() - start


def drain_batch(stream) -> tuple[list[list[int]], int]:
    """A batch stream's new tokens per prompt, and its number of steps."""
    outputs, steps = None, 0
    for rows in stream:
        outputs = outputs or [[] for _ in rows]
        steps += 1
        for output, row in zip(outputs, rows):
            if row is not None:
                output += row["new_token_ids"]
    return outputs, steps


def timed_generate(model, batch, max_new_tokens, **kwargs):
    """(outputs, steps, seconds) of the second of two identical calls.

    The first sizes the pooled cache and captures (and compiles) every graph the second needs (one per
    tree, batch bucket and cache span), so the timed call captures none, as in a server after its warm-up.
    """
    list(model.medusa_generate(batch, max_new_tokens=max_new_tokens, **kwargs))
    (outputs, steps), seconds = timed(lambda: drain_batch(model.medusa_generate(batch, max_new_tokens=max_new_tokens, **kwargs)))
    return outputs, steps, seconds


# ----------------------------------------------------------------------------- step overhead
COMPILE_STEP = {"default": None, "on": True, "off": False}  # --compile-step -> medusa_generate's compile_step

def _timed_run(model, prompt, tree, new_tokens, cuda_graph, compile_step=False):
    """(tokens, steps, seconds) of one generation, timed with device synchronisation; heads only (no copy
    branches: with them the "none" tree would speculate and stop being the greedy baseline)."""
    (tokens, steps), seconds = timed(lambda: drain(model.medusa_generate(
        prompt, max_new_tokens=new_tokens, medusa_choices=tree, cuda_graph=cuda_graph, eos_token_id=[],
        compile_step=compile_step, copy_chains=0)))
    return tokens, steps, seconds


def measure_step_overhead(shape: str = "7b", tree: str = "mc_sim_7b_63", prompt_len: int = 128, new_tokens: int = 256,
                          device: str = "cuda", compile_step: bool | None = None) -> dict:
    """Step times of the greedy loop and of Medusa on a random-weight ``shape`` Llama with 5 random heads.

    On CUDA (bf16) eager and graph-replayed steps, else eager only (fp32). ``overhead_c`` is
    c = medusa_step / greedy_step - 1 of the graph steps where there are any. Checks first that the
    loops give the tokens of Hugging Face ``generate`` (``identical_first_32_tokens``), uncompiled.
    ``compile_step``: of the timed steps (None: the library's default, compiled where the step is a graph).
    """
    cuda = device.startswith("cuda")
    model = random_medusa(shape, 5, torch.bfloat16 if cuda else torch.float32, device)
    prompt = torch.randint(0, model.config.vocab_size, (1, prompt_len), generator=torch.Generator().manual_seed(1))
    prompt = prompt.to(device)
    result = {"shape": shape, "device": torch.cuda.get_device_name() if cuda else "cpu", "torch": torch.__version__,
              "prompt_len": prompt_len, "new_tokens": new_tokens, "tree": tree, "compile_step": compile_step}
    modes = (False, True) if cuda else (False,)
    reference = model.base_model.generate(prompt, max_new_tokens=32, do_sample=False,
                                          attention_mask=torch.ones_like(prompt))[0, prompt_len:].tolist()
    checks = {}
    for name in ("none", tree):
        eager, _, _ = _timed_run(model, prompt, name, 32, False)
        checks[name] = {"eager_equals_hf": eager == reference}
        if cuda:
            checks[name]["graph_equals_eager"] = _timed_run(model, prompt, name, 32, True)[0] == eager
    result["identical_first_32_tokens"] = checks

    for name, label in (("none", "greedy"), (tree, "medusa")):
        for graph in modes:
            _timed_run(model, prompt, name, new_tokens, graph, compile_step)  # warm-up: compilation, graph captures
            tokens, steps, seconds = _timed_run(model, prompt, name, new_tokens, graph, compile_step)
            result[f"{label}_{'graph' if graph else 'eager'}_ms_per_step"] = 1000 * seconds / steps
            result[f"{label}_{'graph' if graph else 'eager'}_tokens_per_step"] = len(tokens) / steps
    for graph in modes:
        kind = "graph" if graph else "eager"
        result[f"overhead_c_{kind}"] = result[f"medusa_{kind}_ms_per_step"] / result[f"greedy_{kind}_ms_per_step"] - 1
    result["overhead_c"] = result["overhead_c_graph" if cuda else "overhead_c_eager"]
    if cuda:
        result["peak_memory_gib"] = torch.cuda.max_memory_allocated() / 2**30
    return result


# ----------------------------------------------------------------------------- host memory (Linux)
def _status_gib(field: str) -> float:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field)) / 2**20


def peak_added(fn):
    """``(fn(), GiB)``: GiB is how far ``fn`` raised the peak resident size above the size it started at.

    The peak (VmHWM) is reset to the current resident size first (``/proc/self/clear_refs``), so what
    was allocated before does not count. Measure in a fresh process: heap pages an earlier piece of
    work freed but kept would take the allocations unseen.
    """
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    before = _status_gib("VmRSS:")
    out = fn()
    return out, _status_gib("VmHWM:") - before


def load_module_file(name: str, path: str) -> ModuleType:
    """Execute the Python file ``path`` as module ``name``: its relative imports resolve in ``name``'s package."""
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
