"""Tokens/s per category and overall, Medusa tokens/step and speedup, from two answer files' timings.

    python llm_judge/show_speed.py --medusa llm_judge/data/mt_bench/model_answer/my-medusa.jsonl \
        --baseline llm_judge/data/mt_bench/model_answer/my-base-greedy.jsonl
"""

import argparse
import json
import os

from medusa.eval.answer_cli import main_guard
from medusa.eval.answer_speed import speed_summary
from medusa.eval.answers import read_answers
from medusa.eval.questions import DEFAULT_QUESTIONS, load_questions


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--medusa", required=True, help="answer file of gen_model_answer_medusa.py")
    parser.add_argument("--baseline", required=True, help="answer file of gen_model_answer_baseline.py")
    parser.add_argument("--question-file", default=DEFAULT_QUESTIONS, help="for the categories (default: MT-bench)")
    parser.add_argument("--output", help="also write the figures as JSON here")
    args = parser.parse_args(argv)
    for path in (args.medusa, args.baseline):
        if not os.path.isfile(path):
            raise FileNotFoundError(f"Answer file {path!r} does not exist.")
    summary = speed_summary(read_answers(args.medusa), read_answers(args.baseline), load_questions(args.question_file))
    print(f"{'category':14s} {'questions':>9s} {'medusa tok/s':>12s} {'baseline tok/s':>14s} {'tok/step':>8s} {'speedup':>7s}")
    for name, f in [*summary["categories"].items(), ("overall", summary["overall"])]:
        print(f"{name:14s} {f['questions']:9d} {f['medusa_tok_s']:12.1f} {f['baseline_tok_s']:14.1f} "
              f"{f['medusa_tokens_per_step']:8.2f} {f['speedup']:7.2f}")
    if args.output:
        with open(args.output, "w") as f:
            json.dump(summary, f, indent=1)


if __name__ == "__main__":
    main_guard(main)
