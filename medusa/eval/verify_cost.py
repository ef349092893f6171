"""Measure the verify-cost curve: ms per decode step for each batch size x tree size.

Each point decodes ``batch`` random prompts with ``MedusaModel.medusa_generate`` (greedy, no copy
branches, EOS ignored: CUDA-graph steps on a GPU) and times the steps between the stream's yields:
each yield follows the step's one host read of the accepted tokens, so a step's time is the loop's
own, bookkeeping included. The first step (it includes the prefill and graph captures) and
``--warmup`` more are not timed. Tree size T counts the tokens verified per row, root included
(1 = plain decoding); the T - 1 nodes are grown by ``build_tree`` from made-up accuracies (the tree's
shape barely matters: the step's shapes are what cost). Attention runs over the filled part of the
cache (in blocks of 256 slots), so the cost also grows with the context: the prompts are
``--prompt-len`` + ``--new-tokens`` / 2 tokens long, the context of a step halfway through a
generation of ``--new-tokens`` tokens. Writes a :class:`~medusa.model.CostCurve` JSON for
``TreePolicy`` / ``heads_accuracy --cost-curve``.

    python -m medusa.eval.verify_cost --shape 7b --output cost_7b.json
    python -m medusa.eval.verify_cost --model HEADS_DIR --output cost.json
    python -m medusa.eval.verify_cost --demo --output cost_demo.json
    python -m medusa.eval.verify_cost --shape tiny --device cpu --batch-sizes 1,2 --tree-sizes 1,4 --iters 3 --output c.json
"""

import argparse
import sys
import time

import torch

from ..demo import DemoError, load_demo
from ..model import CheckpointError, CostCurve, MedusaModel
from ..model.medusa_choices import MAX_TOP_K
from ..model.tree_builder import build_tree, tree_capacity
from .answer_cli import model_dtype
from .random_model import SHAPES, random_medusa


def timing_tree(num_heads: int, tree_size: int) -> list[list[int]] | str:
    """A plausible ``tree_size``-token tree for ``num_heads`` heads (acc[d][r] = 0.6^(d+1) * 0.5^r), "none" for 1."""
    if tree_size == 1:
        return "none"
    made_up = [[0.6 ** (d + 1) * 0.5**r for r in range(MAX_TOP_K)] for d in range(num_heads)]
    return build_tree(made_up, tree_size - 1)


def step_ms(model: MedusaModel, batch_size: int, tree_size: int, prompt_len: int = 128, new_tokens: int = 512,
            warmup: int = 5, iters: int = 50, cuda_graph: bool = True, seed: int = 0, fold_gqa: bool = False) -> float:
    """Mean ms of one greedy decode step of ``batch_size`` rows verifying ``tree_size`` tokens each."""
    device = model.lm_head.weight.device
    gen = torch.Generator().manual_seed(seed)
    prompts = [torch.randint(0, model.config.vocab_size, (prompt_len + new_tokens // 2,), generator=gen).to(device)
               for _ in range(batch_size)]  # a list: batch mode even for one row (no text decoding per step)
    steps = 1 + warmup + iters
    # Uncompiled: a background compile would switch steps mid-timing.
    stream = model.medusa_generate(prompts, medusa_choices=timing_tree(model.config.medusa_num_heads, tree_size),
                                   copy_chains=0, adaptive=False, max_steps=steps, eos_token_id=[], cuda_graph=cuda_graph,
                                   fold_gqa=fold_gqa, compile_step=False)
    seconds = []
    start = time.perf_counter()
    for _ in stream:
        now = time.perf_counter()
        seconds.append(now - start)
        start = now
    if len(seconds) != steps:  # rows stop early only when the context runs out
        raise ValueError(f"only {len(seconds)} of {steps} steps fit in the model's context after prompts of "
                         f"{prompt_len + new_tokens // 2} tokens; lower --prompt-len, --new-tokens or --iters.")
    return 1000 * sum(seconds[1 + warmup:]) / iters


def measure(model: MedusaModel, batch_sizes: list[int], tree_sizes: list[int], **timing) -> list[list[float]]:
    """``ms[i][j]``: :func:`step_ms` at ``batch_sizes[i]``, ``tree_sizes[j]``."""
    ms = []
    for b in batch_sizes:
        ms.append([])
        for t in tree_sizes:
            ms[-1].append(step_ms(model, b, t, **timing))
            if torch.cuda.is_available():
                torch.cuda.empty_cache()  # what the last point freed goes before the next, larger one
    return ms


def _sizes(text: str) -> list[int]:
    return sorted({int(s) for s in text.split(",") if s.strip()})


def _load(args, dtype: torch.dtype) -> tuple[MedusaModel, str]:
    """The model to time and its name in the curve."""
    if args.shape:
        return random_medusa(args.shape, args.heads, dtype, args.device), f"random-{args.shape}"
    if args.demo:
        return load_demo(dtype=dtype), "demo"
    return MedusaModel.from_pretrained(args.model, base_model=args.base_model, dtype=dtype), args.model


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--model", help="Medusa heads directory (any layout MedusaModel reads).")
    source.add_argument("--demo", action="store_true", help="The shipped demo heads on SmolLM2-135M-Instruct.")
    source.add_argument("--shape", choices=sorted(SHAPES), help="Random weights of this shape (Llama).")
    parser.add_argument("--base-model", help="With --model: base model directory (default: the heads' config).")
    parser.add_argument("--heads", type=int, default=5, help="With --shape: number of Medusa heads.")
    parser.add_argument("--batch-sizes", type=_sizes, default=[1, 4, 16, 64])
    parser.add_argument("--tree-sizes", type=_sizes, default=[1, 2, 4, 8, 16, 32, 48, 64, 96, 128],
                        help="Tokens verified per row, root included (1 = plain decoding; always measured).")
    parser.add_argument("--prompt-len", type=int, default=128)
    parser.add_argument("--new-tokens", type=int, default=512, help="Time steps halfway through generations this long.")
    parser.add_argument("--warmup", type=int, default=5, help="Untimed steps after the first (which is never timed).")
    parser.add_argument("--iters", type=int, default=50, help="Timed steps per point.")
    parser.add_argument("--eager", action="store_true", help="Time eager steps on a GPU (no CUDA graph).")
    parser.add_argument("--fold-gqa", action="store_true", help="Decode as medusa_generate(fold_gqa=True).")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default="auto", choices=["auto", "float32", "float16", "bfloat16"])
    parser.add_argument("--output", required=True, help="Where to write the CostCurve JSON.")
    args = parser.parse_args(argv)
    if args.iters < 1 or args.warmup < 0:
        parser.error("--iters must be at least 1 and --warmup at least 0.")

    device = torch.device(args.device)
    dtype = model_dtype(args)
    try:
        model, name = _load(args, dtype)
    except (CheckpointError, DemoError, OSError) as e:
        sys.exit(f"verify_cost: {e}")
    model = model.to(device).eval()
    limit = 1 + tree_capacity(model.config.medusa_num_heads, MAX_TOP_K)  # root included
    tree_sizes = sorted({1} | {t for t in args.tree_sizes if t <= limit})
    if dropped := [t for t in args.tree_sizes if t > limit]:
        print(f"skipping tree sizes {dropped}: {model.config.medusa_num_heads} heads hold at most {limit} tokens",
              file=sys.stderr)

    try:
        ms = measure(model, args.batch_sizes, tree_sizes, prompt_len=args.prompt_len, new_tokens=args.new_tokens,
                     warmup=args.warmup, iters=args.iters, cuda_graph=device.type == "cuda" and not args.eager,
                     fold_gqa=args.fold_gqa)
    except ValueError as e:
        sys.exit(f"verify_cost: {e}")
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    curve = CostCurve(args.batch_sizes, tree_sizes, ms, device=gpu, model=name, dtype=str(dtype).removeprefix("torch."))
    curve.save(args.output)

    print(f"ms per decode step ({gpu}, {name}, {curve.dtype}); in brackets: relative to tree size 1")
    print("batch \\ tree " + "".join(f"{t:>16}" for t in tree_sizes))
    for b, row in zip(args.batch_sizes, ms):
        print(f"{b:>12} " + "".join(f"{v:>9.3f} ({v / row[0]:4.2f})" for v in row))


if __name__ == "__main__":
    main()
