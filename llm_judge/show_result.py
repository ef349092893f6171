"""FastChat's MT-bench scores (``fastchat.llm_judge.show_result``) from llm_judge/data/<bench>/model_judgment/.

Every option is FastChat's (``--mode single|pairwise-baseline|pairwise-all``, ``--judge-model``,
``--model-list``, ``--input-file``).

    python llm_judge/show_result.py --model-list my-medusa my-base-greedy
"""

import sys

from medusa.eval.answer_cli import main_guard
from medusa.eval.judge import run_fastchat_script


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    run_fastchat_script("fastchat.llm_judge.show_result", argv, ("pandas",), ("--input-file",), __doc__)


if __name__ == "__main__":
    main_guard(main)
