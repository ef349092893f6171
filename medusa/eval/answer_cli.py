"""Command-line plumbing shared by ``llm_judge/gen_model_answer_medusa.py`` and ``..._baseline.py``."""

import argparse
import os
import sys
from collections.abc import Callable

import torch

from medusa.model import CheckpointError

from .answers import Decoder, write_answers
from .judge import JudgeError
from .questions import DEFAULT_QUESTIONS, load_questions, render_chat

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def answer_parser(description: str) -> argparse.ArgumentParser:
    """Options common to both answer generators (FastChat's names where FastChat has one)."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base-model", help="base model directory (default: the one the heads' config names)")
    parser.add_argument("--model-id", help="name of the answers (default: from the model directory)")
    parser.add_argument("--question-file", default=DEFAULT_QUESTIONS, help="FastChat question file (default: MT-bench)")
    parser.add_argument("--answer-file", help="default: <question file dir>/model_answer/<model id>.jsonl")
    parser.add_argument("--question-begin", type=int, help="first question index (as in Python slicing)")
    parser.add_argument("--question-end", type=int, help="question index to stop before")
    parser.add_argument("--max-new-tokens", type=int, default=1024, help="per turn (default 1024, as FastChat)")
    parser.add_argument("--temperature", type=float, default=0.0, help="0 (default) for greedy decoding")
    parser.add_argument("--num-choices", type=int, default=1, help="answers per question (choice i is seeded with i)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", choices=DTYPES, help="default: bfloat16 on CUDA, float32 on CPU")
    return parser


def model_dtype(args) -> torch.dtype:
    """``args.dtype`` (a DTYPES name; None or ``"auto"``: bfloat16 on CUDA, float32 elsewhere) on ``args.device``."""
    auto = args.dtype in (None, "auto")
    return DTYPES["bfloat16" if torch.device(args.device).type == "cuda" else "float32"] if auto else DTYPES[args.dtype]


def answer_file(args, model_id: str) -> str:
    return args.answer_file or os.path.join(os.path.dirname(os.path.abspath(args.question_file)), "model_answer",
                                            f"{model_id}.jsonl")


def run(args, make_decoder: Callable[[int], Decoder], tokenizer, model_id: str) -> None:
    """Answer the selected questions with ``make_decoder(max_new_tokens)`` and report where they went."""
    device = torch.device(args.device)
    questions = load_questions(args.question_file)[args.question_begin:args.question_end]
    path = answer_file(args, model_id)
    if device.type == "cuda" and questions:
        # Warm-up outside the timings: CUDA graph capture, cuBLAS handles, allocator growth.
        make_decoder(16)(render_chat(tokenizer, [{"role": "user", "content": questions[0]["turns"][0]}]).to(device))
    written = write_answers(make_decoder(args.max_new_tokens), tokenizer, questions, path, model_id, device,
                            args.num_choices)
    print(f"{written} of {len(questions)} questions answered now (the rest were already there); answers in {path}")


def main_guard(main: Callable[[list[str] | None], None], argv: list[str] | None = None) -> None:
    """Run ``main`` and turn bad input (missing files, bad checkpoints or options, no judge) into a one-line error."""
    try:
        main(argv)
    except (CheckpointError, FileNotFoundError, ValueError, JudgeError) as e:
        sys.exit(f"error: {e}")
