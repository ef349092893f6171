"""FastChat's MT-bench scores (``fastchat.llm_judge.show_result``) from llm_judge/data/<bench>/model_judgment/.

Every option is FastChat's (``--mode single|pairwise-baseline|pairwise-all``, ``--judge-model``,
``--model-list``, ``--input-file``).

    python llm_judge/show_result.py --model-list my-medusa my-base-greedy
"""

import sys

from medusa.eval.answer_cli import main_guard
from medusa.eval.judge import absolute_path_options, check_packages, run_fastchat


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    check_packages("pandas")
    run_fastchat("fastchat.llm_judge.show_result", absolute_path_options(argv, ("--input-file",)))


if __name__ == "__main__":
    main_guard(main)
