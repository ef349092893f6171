"""Where a decode step's time goes on the GPU: the CUDA-graph step's wall time split into kernel time, gaps between
the graph's kernels and host time between steps.

For the plain greedy step and the Medusa step: the wall time of a graph step (median of ``--repeats`` runs), a
profile of graph-replayed steps (kernel time by kind: matmul, attention, other; the GPU idle between kernels inside
a step and between steps, where the host reads the step's result and prepares the next), and the top kernels.
If the step costs about its kernel time, it is GPU-bound and only less arithmetic helps; gaps inside the graph
shrink with fewer kernels; host time with less work per step in the decode loop.

    python -m benchmarks.profile_step --model medusa/demo_heads --base-model DIR --output profile.txt
    python -m benchmarks.profile_step --shape 7b --output profile_7b.txt   # random weights, random prompt
"""

import argparse
import statistics
import time

import torch
from torch.autograd import DeviceType
from torch.profiler import ProfilerActivity, profile

from benchmarks.common import COMPILE_STEP
from medusa.eval.questions import DEFAULT_QUESTIONS, load_questions, render_chat
from medusa.eval.random_model import SHAPES, random_medusa
from medusa.model import MedusaModel


def kind(name: str) -> str:
    name = name.lower()
    if any(k in name for k in ("gemm", "gemv", "cutlass", "matmul", "sm90_xmma", "nvjet")):
        return "matmul"
    if any(k in name for k in ("flash", "fmha", "attention", "efficient")):
        return "attention"
    return "other"


# An idle GPU of at least this long between two kernels is the host's time between steps; shorter, a graph's own gap.
HOST_GAP_US = 20.0


def idle_time(kernels) -> tuple[float, float, float]:
    """Microseconds over the profiled kernels ``kernels`` (profiler events): the GPU busy (their union), idle in gaps
    under ``HOST_GAP_US`` and idle in longer gaps, from the first kernel's start to the last one's end."""
    spans = sorted((e.time_range.start, e.time_range.end) for e in kernels)
    busy = short = long = 0.0
    end = spans[0][0] if spans else 0.0
    for start, stop in spans:
        gap = start - end
        if gap > 0:
            short, long = (short + gap, long) if gap < HOST_GAP_US else (short, long + gap)
        busy += max(0.0, stop - max(start, end))
        end = max(end, stop)
    return busy, short, long


def steps(model, prompt, tree, n, cuda_graph, compile_step, profiler=None):
    """Seconds per step over ``n`` steps (prefill and the first step, which captures a graph, excluded)."""
    stream = model.medusa_generate(prompt, max_new_tokens=8 * (n + 1), max_steps=n + 1, medusa_choices=tree,
                                   cuda_graph=cuda_graph, eos_token_id=[], compile_step=compile_step)
    next(stream)
    torch.cuda.synchronize()
    if profiler is not None:
        profiler.start()
    start = time.perf_counter()
    assert sum(1 for _ in stream) == n
    torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    if profiler is not None:
        profiler.stop()
    return seconds / n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--model", help="Medusa checkpoint (the step runs on an MT-bench prompt)")
    source.add_argument("--shape", choices=sorted(SHAPES), help="random-weight Llama of this shape, 5 random heads, "
                        "128-token random prompt (as benchmarks/step_overhead.py)")
    parser.add_argument("--base-model")
    parser.add_argument("--tree", help="Medusa tree (default: the default preset)")
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=3, help="timed runs of --steps graph steps (the median counts)")
    parser.add_argument("--compile-step", choices=list(COMPILE_STEP), default="default",
                        help="medusa_generate's compile_step for the graph step: default (None: compiled, as the step is a CUDA "
                        "graph), on or off; the eager steps are timed compiled unless off")
    parser.add_argument("--output")
    args = parser.parse_args()

    if args.shape:
        model = random_medusa(args.shape, 5, torch.bfloat16)
        prompt = torch.randint(0, model.config.vocab_size, (1, 128), generator=torch.Generator().manual_seed(1)).cuda()
    else:
        model = MedusaModel.from_pretrained(args.model, base_model=args.base_model, dtype=torch.bfloat16).cuda().eval()
        question = load_questions(DEFAULT_QUESTIONS, 1)[0]
        prompt = render_chat(model.get_tokenizer(), [{"role": "user", "content": question["turns"][0]}]).cuda()
    report = []
    compile_step = COMPILE_STEP[args.compile_step]
    # The eager steps run (and are timed) as the graph step does: by default compiled, which the library's own
    # default for a step without a graph is not.
    eager_compile = True if compile_step is None else compile_step
    for name, tree in (("greedy", "none"), ("medusa", args.tree)):
        graph_ms = 1000 * statistics.median(steps(model, prompt, tree, args.steps, True, compile_step)
                                            for _ in range(args.repeats))
        eager_ms = 1000 * steps(model, prompt, tree, args.steps, False, eager_compile)
        prof = profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA])
        profiled_ms = 1000 * steps(model, prompt, tree, args.steps, True, compile_step, profiler=prof)
        kernels = [e for e in prof.events() if e.device_type == DeviceType.CUDA]
        per_step, top, counts = {}, {}, {}  # ms per step by kind and by kernel; launches per step by kernel
        for e in kernels:
            ms = (e.time_range.end - e.time_range.start) / 1000 / args.steps
            per_step[kind(e.name)] = per_step.get(kind(e.name), 0.0) + ms
            top[e.name] = top.get(e.name, 0.0) + ms
            counts[e.name] = counts.get(e.name, 0.0) + 1 / args.steps
        busy, short, long = (us / 1000 / args.steps for us in idle_time(kernels))
        report.append(f"== {name} step (tree {tree}) ==\n"
                      f"graph step {graph_ms:.3f} ms (median of {args.repeats} x {args.steps} steps), eager step "
                      f"{eager_ms:.3f} ms\n"
                      f"profiled graph steps {profiled_ms:.3f} ms: GPU busy {busy:.3f} ms in {len(kernels) / args.steps:.0f} "
                      f"kernels (" + ", ".join(f"{k} {v:.3f} ms" for k, v in sorted(per_step.items())) + f"), idle "
                      f"{short:.3f} ms in gaps under {HOST_GAP_US:.0f} us and {long:.3f} ms in longer gaps (host)\n"
                      + "\n".join(f"  {ms:7.3f} ms/step  x{counts[n]:5.1f}  {n[:110]}"
                                  for n, ms in sorted(top.items(), key=lambda item: -item[1])[:30]))
        print(report[-1], flush=True)
    if args.output:
        with open(args.output, "w") as f:
            f.write("\n\n".join(report) + "\n")


if __name__ == "__main__":
    main()
