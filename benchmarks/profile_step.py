"""Where a decode step's time goes on the GPU: kernel time per step (profiled eager steps) against the graph-replayed step.

For the plain greedy step and the Medusa step: GPU kernel time per step by kind (matmul, attention,
other), the top kernels, and the wall time of a CUDA-graph step. If the graph step costs about the
kernel time, the step is GPU-bound and only less arithmetic helps; if more, launch gaps remain.

    python -m benchmarks.profile_step --model medusa/demo_heads --base-model DIR --output profile.txt
    python -m benchmarks.profile_step --shape 7b --output profile_7b.txt   # random weights, random prompt
"""

import argparse
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
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--compile-step", choices=list(COMPILE_STEP), default="default",
                        help="medusa_generate's compile_step for the graph step: default (None: compiled, as the step is a CUDA "
                        "graph), on or off; the eager steps are profiled compiled unless off")
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
    # The eager steps run (and are profiled) as the graph step does: by default compiled, which the library's own
    # default for a step without a graph is not.
    eager_compile = True if compile_step is None else compile_step
    for name, tree in (("greedy", "none"), ("medusa", args.tree)):
        graph_ms = 1000 * steps(model, prompt, tree, args.steps, True, compile_step)
        eager_ms = 1000 * steps(model, prompt, tree, args.steps, False, eager_compile)
        prof = profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA])
        steps(model, prompt, tree, args.steps, False, eager_compile, profiler=prof)
        kernels = [e for e in prof.key_averages() if e.device_type == DeviceType.CUDA]
        per_step = {}
        for e in kernels:
            per_step[kind(e.key)] = per_step.get(kind(e.key), 0.0) + e.self_device_time_total / 1000 / args.steps
        launches = sum(e.count for e in kernels) / args.steps
        report.append(f"== {name} step (tree {tree}) ==\n"
                      f"graph step {graph_ms:.3f} ms, eager step {eager_ms:.3f} ms, GPU kernel time "
                      f"{sum(per_step.values()):.3f} ms/step in {launches:.0f} kernels: "
                      + ", ".join(f"{k} {v:.3f} ms" for k, v in sorted(per_step.items())) + "\n"
                      + "\n".join(f"  {e.self_device_time_total / 1000 / args.steps:7.3f} ms/step  "
                                  f"x{e.count / args.steps:5.1f}  {e.key[:110]}"
                                  for e in sorted(kernels, key=lambda e: -e.self_device_time_total)[:30]))
        print(report[-1], flush=True)
    if args.output:
        with open(args.output, "w") as f:
            f.write("\n\n".join(report) + "\n")


if __name__ == "__main__":
    main()
