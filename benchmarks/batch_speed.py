"""Tokens/s at several batch sizes: the library's greedy loop against Medusa with its defaults (tree policy, copy
branches, trees that follow acceptance), with the policy's trees fixed, and with a fixed tree.

Rows are the questions' first turns (cycled; with ``--by-category``, each category's apart), each decoded to exactly ``--max-new-tokens`` (EOS ignored, so
the batch size stays what the row says). With ``--continuous``, 4 x batch-size rows (at least 16) stop
at EOS and go through one call with ``batch_size=`` (a finished row takes the next waiting prompt), as
a server would run them. Every mode runs the same rows; Medusa rows are also compared token for token
with the greedy loop's.

    python -m benchmarks.batch_speed --model medusa/demo_heads --base-model DIR \\
        --cost-curve cost.json --accuracies eval.json --output batch_speed.json
"""

import argparse
import itertools
import json

import torch

from benchmarks.common import timed_generate
from medusa.eval.questions import DEFAULT_QUESTIONS, load_questions, render_chat
from medusa.model import MedusaModel, TreePolicy

ROWS = {1: 16, 4: 16, 16: 32, 64: 64}  # rows decoded per batch size (whole batches)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--base-model")
    parser.add_argument("--questions", default=DEFAULT_QUESTIONS)
    parser.add_argument("--batch-sizes", default="1,4,16,64")
    parser.add_argument("--max-new-tokens", type=int, default=256)
    parser.add_argument("--tree", help="also a 'medusa' mode: this fixed tree with the default copy branches")
    parser.add_argument("--cost-curve", help="verify-cost curve (python -m medusa.eval.verify_cost) for the 'policy' mode")
    parser.add_argument("--accuracies", help="heads_accuracy JSON for the 'policy' mode")
    parser.add_argument("--continuous", action="store_true", help="continuous batching with EOS (see above)")
    parser.add_argument("--device", default="cuda", help="cuda (bf16) or cpu (fp32, a smoke test)")
    parser.add_argument("--fold-gqa", action="store_true", help="every mode decodes with fold_gqa=True")
    parser.add_argument("--by-category", action="store_true", help="one figure per question category")
    parser.add_argument("--modes", default="default,fixed", help="Medusa modes besides greedy: default (the library's "
                        "defaults), fixed (adaptive trees off), adaptive (on)")
    parser.add_argument("--output")
    args = parser.parse_args(argv)

    dtype = torch.bfloat16 if args.device.startswith("cuda") else torch.float32
    model = MedusaModel.from_pretrained(args.model, base_model=args.base_model, dtype=dtype).to(args.device).eval()
    tokenizer = model.get_tokenizer()
    questions = load_questions(args.questions)
    groups = {"all": questions}
    if args.by_category:
        groups = {c: [q for q in questions if q["category"] == c] for c in dict.fromkeys(q["category"] for q in questions)}
    policy = TreePolicy.load(args.accuracies, args.cost_curve) if args.cost_curve else None
    chosen = {"default": {}, "fixed": {"adaptive": False}, "adaptive": {"adaptive": True}}
    modes = {"greedy": {"medusa_choices": "none", "copy_chains": 0}} | {m: chosen[m] for m in args.modes.split(",")}
    if args.tree:
        modes["medusa"] = {"medusa_choices": args.tree, "adaptive": False}
    if policy is not None:
        modes["policy"] = {"tree_policy": policy, "adaptive": False}
    for kwargs in modes.values():
        kwargs["fold_gqa"] = args.fold_gqa

    results = []
    for (group, group_questions), batch_size in itertools.product(groups.items(), map(int, args.batch_sizes.split(","))):
        prompts = [render_chat(tokenizer, [{"role": "user", "content": q["turns"][0]}])[0] for q in group_questions]
        if args.continuous:
            rows, call = max(4 * batch_size, 16), {"batch_size": batch_size}
            batches = [[prompts[i % len(prompts)] for i in range(rows)]]
        else:
            rows, call = ROWS.get(batch_size, batch_size), {"eos_token_id": []}
            batches = [[prompts[(start + i) % len(prompts)] for i in range(batch_size)]
                       for start in range(0, rows, batch_size)]
        result = {"group": group, "batch_size": batch_size, "rows": rows, "continuous": args.continuous}
        if policy is not None:
            choice = policy.choices(batch_size)
            result["policy_tree_nodes"] = 0 if choice == "none" else len(choice)
        greedy_outputs = []
        for mode, kwargs in modes.items():
            tokens = steps = seconds = identical = 0
            for i, batch in enumerate(batches):
                outputs, n_steps, s = timed_generate(model, batch, args.max_new_tokens, **call, **kwargs)
                tokens += sum(map(len, outputs))
                steps, seconds = steps + n_steps, seconds + s
                if mode == "greedy":
                    greedy_outputs.append(outputs)
                else:
                    identical += sum(a == b for a, b in zip(outputs, greedy_outputs[i]))
            result[mode] = {"tok_s": tokens / seconds, "tokens_per_step": tokens / (steps * batch_size),
                            "ms_per_step": 1000 * seconds / steps}
            if mode != "greedy":
                result[mode]["speedup"] = result[mode]["tok_s"] / result["greedy"]["tok_s"]
                result[mode]["identical_rows"] = identical / result["rows"]
        results.append(result)
        print(json.dumps(result), flush=True)

    print(f"{'group':>14} {'batch':>5} {'greedy tok/s':>12} " +
          " ".join(f"{m + ' tok/s':>14} {'x':>5} {'tok/step':>8}" for m in modes if m != "greedy"))
    for r in results:
        print(f"{r['group']:>14} {r['batch_size']:>5} {r['greedy']['tok_s']:>12.0f} " + " ".join(
            f"{r[m]['tok_s']:>14.0f} {r[m]['speedup']:>5.2f} {r[m]['tokens_per_step']:>8.2f}" for m in modes if m != "greedy"))
    if args.output:
        with open(args.output, "w") as f:
            cuda = args.device.startswith("cuda")
            json.dump({"device": torch.cuda.get_device_name() if cuda else "cpu", "torch": torch.__version__,
                       "max_new_tokens": args.max_new_tokens, "fold_gqa": args.fold_gqa,
                       "peak_memory_gib": torch.cuda.max_memory_allocated() / 2**30 if cuda else None,
                       "results": results}, f, indent=1)


if __name__ == "__main__":
    main()
