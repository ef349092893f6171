"""FastChat's MT-bench judgment (``fastchat.llm_judge.gen_judgment``) on llm_judge/data.

Every option is FastChat's (``--mode single|pairwise-baseline|pairwise-all``, ``--model-list``,
``--judge-model`` (default gpt-4), ``--parallel``, ...); answers are read from
llm_judge/data/<bench>/model_answer/ and judgments written to llm_judge/data/<bench>/model_judgment/.
Before anything runs, the judge's API key and endpoint are checked with one cheap request
(``OPENAI_API_KEY``, ``OPENAI_API_BASE`` for an OpenAI-compatible server; ``ANTHROPIC_API_KEY`` for
claude judges). Math, reasoning and coding questions need FastChat's reference answers in
llm_judge/data/mt_bench/reference_answer/<judge model>.jsonl.

    OPENAI_API_KEY=... python llm_judge/gen_judgment.py --model-list my-medusa my-base-greedy --parallel 4
"""

import argparse
import sys

from medusa.eval.answer_cli import main_guard
from medusa.eval.judge import asks_for_help, check_judge_api, run_fastchat_script


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(add_help=False)  # FastChat's parser answers --help
    parser.add_argument("--judge-model", default="gpt-4")
    args, _ = parser.parse_known_args(argv)
    if not asks_for_help(argv):
        check_judge_api(args.judge_model)
    run_fastchat_script("fastchat.llm_judge.gen_judgment", argv, ("openai", "anthropic"), ("--judge-file",), __doc__)


if __name__ == "__main__":
    main_guard(main)
