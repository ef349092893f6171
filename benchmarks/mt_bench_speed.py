"""Tokens/s on MT-bench first turns: Hugging Face ``generate()`` greedy, the library's greedy loop, and Medusa.

Every generation is timed with device synchronisation, batch size 1, temperature 0. Prints a table per
category and overall (tokens/s of each, Medusa tokens per step, both speedups, the fraction of answers
identical to the library's greedy loop over all their tokens, peak GPU memory) and writes JSON. Then, on a
random-weight 7B-shaped Llama with random heads, the per-step overhead c = Medusa step / greedy step - 1
(``benchmarks/step_overhead.py``; ``--overhead-shape none`` skips it).

    python -m benchmarks.mt_bench_speed --model medusa/demo_heads --base-model DEMO_DIR --output speed.json
"""

import argparse
import collections
import json

import torch

from benchmarks.common import COMPILE_STEP, measure_step_overhead, timed
from medusa.eval.answers import drain
from medusa.eval.questions import DEFAULT_QUESTIONS, load_questions, render_chat
from medusa.eval.random_model import SHAPES
from medusa.model import MedusaModel


def first_difference(a: list[int], b: list[int]) -> int | None:
    """Index of the first differing token (the shorter length if one is a prefix of the other), None if equal."""
    if a == b:
        return None
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))


def tree_arguments(spec: str) -> dict:
    """``medusa_generate`` arguments of a ``--trees`` entry: ``TREE`` or ``TREE@CxL``."""
    tree, _, copy = spec.partition("@")
    arguments = {"medusa_choices": None if tree == "default" else tree}
    if copy:
        chains, _, depth = copy.partition("x")
        arguments |= {"copy_chains": int(chains), "copy_depth": int(depth), "adaptive": False}
    return arguments


def decode(model, prompt, choices: dict, common: dict, repeats: int = 1) -> tuple[dict, list[int]]:
    """The greedy loop's and each tree's time and tokens on one prompt, Medusa compared with the greedy loop;
    and the greedy loop's tokens. With ``repeats`` > 1 the loops run in turn that many times and each keeps
    its fastest run (times of every run under ``*_runs``): on a shared machine other work only adds time."""
    runs: dict[str, list] = {}
    for _ in range(repeats):
        runs.setdefault("greedy", []).append(timed(lambda: drain(model.greedy_generate(prompt, **common))))
        for tree, arguments in choices.items():
            runs.setdefault(tree, []).append(timed(lambda: drain(model.medusa_generate(prompt, **arguments, **common))))
    fastest = {name: min(times, key=lambda run: run[1]) for name, times in runs.items()}
    (greedy, _), seconds = fastest.pop("greedy")
    row = {"greedy_s": seconds, "greedy_tokens": len(greedy)}
    if repeats > 1:
        row["greedy_s_runs"] = [s for _, s in runs["greedy"]]
    for tree, ((tokens, steps), seconds) in fastest.items():
        row[f"medusa[{tree}]"] = {"tokens": len(tokens), "steps": steps, "s": seconds, "identical": tokens == greedy,
                                 "first_difference": first_difference(tokens, greedy)}
        if repeats > 1:
            row[f"medusa[{tree}]"]["s_runs"] = [s for _, s in runs[tree]]
    return row, greedy


def loops_summary(rows: list[dict], hf_tok_s: float | None) -> dict:
    """Tokens/s of the greedy loop and of each tree, tokens per step, speed-ups and answers identical to greedy."""
    s = {"greedy_tok_s": sum(r["greedy_tokens"] for r in rows) / sum(r["greedy_s"] for r in rows)}
    for key in (k for k in rows[0] if k.startswith("medusa[")):
        m = [r[key] for r in rows]
        tok_s = sum(x["tokens"] for x in m) / sum(x["s"] for x in m)
        s[key] = {"tok_s": tok_s, "tokens_per_step": sum(x["tokens"] for x in m) / sum(x["steps"] for x in m),
                  "speedup_vs_greedy": tok_s / s["greedy_tok_s"],
                  "speedup_vs_hf": tok_s / hf_tok_s if hf_tok_s else None,
                  "identical_to_greedy": sum(x["identical"] for x in m) / len(m)}
    return s


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--base-model")
    parser.add_argument("--questions", default=DEFAULT_QUESTIONS)
    parser.add_argument("--limit", type=int)
    parser.add_argument("--repeats", type=int, default=1,
                        help="run the loops in turn this many times per question and keep each one's fastest run "
                             "(for shared machines, where other work only adds time)")
    parser.add_argument("--max-new-tokens", type=int, default=256)
    parser.add_argument("--trees", nargs="+", default=["default"],
                        help="trees to run Medusa with: preset names, JSON files, 'none' (no head nodes) or 'default' "
                             "(mc_sim_7b_63 without the paths deeper than the heads; the preset by name fits only 4+ "
                             "heads); each optionally followed by @CxL: that tree alone, fixed, with C copy chains of L "
                             "tokens (@0x0: heads only); without @, the library's defaults: copy branches and trees "
                             "that follow acceptance")
    parser.add_argument("--hf-limit", type=int, default=10, help="questions also run with HF generate() (it is slow)")
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"],
                        help="float32 shows whether bf16 rounding alone makes outputs differ")
    parser.add_argument("--overhead-shape", default="7b", choices=sorted(SHAPES) + ["none"],
                        help="also time a random-weight Llama of this shape for c = Medusa step / greedy step - 1")
    parser.add_argument("--device", default="cuda", help="cuda, or cpu for a smoke test (use --dtype float32)")
    parser.add_argument("--compile-step", choices=list(COMPILE_STEP), default="default",
                        help="medusa_generate's compile_step for the greedy loop, Medusa and the random-weight steps: default "
                             "(None: compiled where the step is a CUDA graph), on or off")
    parser.add_argument("--output")
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")

    cuda = args.device.startswith("cuda")
    model = MedusaModel.from_pretrained(args.model, base_model=args.base_model, dtype=getattr(torch, args.dtype))
    model = model.to(args.device).eval()
    tokenizer = model.get_tokenizer()
    questions = load_questions(args.questions, args.limit)
    prompts = [render_chat(tokenizer, [{"role": "user", "content": q["turns"][0]}]).to(args.device) for q in questions]
    n = args.max_new_tokens
    choices = {tree: tree_arguments(tree) for tree in args.trees}
    common = {"max_new_tokens": n, "compile_step": COMPILE_STEP[args.compile_step]}
    # Warm-up at full length on the longest prompt (it sizes the pooled cache) and the shortest: together they
    # capture the graph of every cache span the timed runs reach when the prompts' lengths differ by at most n
    # (MT-bench first turns: 42-402 tokens), so no capture is timed.
    for prompt in (max(prompts, key=lambda p: p.shape[1]), min(prompts, key=lambda p: p.shape[1])):
        decode(model, prompt, choices, common)
    if cuda:
        torch.cuda.reset_peak_memory_stats()

    rows = []
    for i, (q, prompt) in enumerate(zip(questions, prompts)):
        row = {"question_id": q["question_id"], "category": q["category"]}
        decoded, greedy = decode(model, prompt, choices, common, args.repeats)
        row |= decoded
        if i < args.hf_limit:
            out, row["hf_s"] = timed(lambda: model.base_model.generate(prompt, max_new_tokens=n, do_sample=False,
                                                                       attention_mask=torch.ones_like(prompt)))
            hf = out[0, prompt.shape[1]:].tolist()
            row["hf_tokens"] = len(hf)
            row["hf_identical_to_greedy"] = hf == greedy
            row["hf_first_difference"] = first_difference(hf, greedy)
        rows.append(row)
        print(json.dumps(row), flush=True)

    def summary(subset):
        hf = [r for r in subset if "hf_s" in r]
        s = {"questions": len(subset)}
        if hf:
            s["hf_tok_s"] = sum(r["hf_tokens"] for r in hf) / sum(r["hf_s"] for r in hf)
            s["hf_identical_to_greedy"] = sum(r["hf_identical_to_greedy"] for r in hf) / len(hf)
        return s | loops_summary(subset, s.get("hf_tok_s"))

    by_category = collections.defaultdict(list)
    for r in rows:
        by_category[r["category"]].append(r)
    result = {"gpu": torch.cuda.get_device_name() if cuda else "cpu", "torch": torch.__version__, "dtype": args.dtype,
              "compile_step": args.compile_step, "repeats": args.repeats,
              "max_new_tokens": n, "peak_memory_gib": torch.cuda.max_memory_allocated() / 2**30 if cuda else None,
              "overall": summary(rows), "categories": {c: summary(rs) for c, rs in sorted(by_category.items())},
              "rows": rows}
    for name, s in [("overall", result["overall"])] + list(result["categories"].items()):
        medusa = "  ".join(f"{t}: {v['tok_s']:.0f} tok/s, {v['tokens_per_step']:.2f} tok/step, "
                           f"x{v['speedup_vs_greedy']:.2f}, same {v['identical_to_greedy']:.2f}"
                           for t, v in s.items() if t.startswith("medusa"))
        print(f"{name:12s} greedy {s['greedy_tok_s']:.0f} tok/s  hf {s.get('hf_tok_s', float('nan')):.1f} tok/s  {medusa}")
    if cuda:
        print(f"peak memory {result['peak_memory_gib']:.2f} GiB")
    if args.overhead_shape != "none":
        del model
        result["overhead"] = o = measure_step_overhead(args.overhead_shape, device=args.device,
                                                       compile_step=COMPILE_STEP[args.compile_step])
        kind = "graph" if cuda else "eager"
        print(f"random-weight {args.overhead_shape} Llama, {o['tree']}: greedy step {o[f'greedy_{kind}_ms_per_step']:.3f} ms, "
              f"Medusa step {o[f'medusa_{kind}_ms_per_step']:.3f} ms ({kind}): c = {o['overhead_c']:.3f}")
    if args.output:
        with open(args.output, "w") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
