"""Question files (FastChat's ``question.jsonl``: ``question_id``, ``category``, ``turns``) and prompt rendering."""

import os

import torch

from medusa.jsonl import read_jsonl

DEFAULT_QUESTIONS = os.path.join(os.path.dirname(__file__), "..", "..", "llm_judge", "data", "mt_bench", "question.jsonl")


def load_questions(path: str = DEFAULT_QUESTIONS, limit: int | None = None) -> list[dict]:
    """Questions from a JSONL file, in file order; ``limit`` keeps the first ones."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"Question file {path!r} does not exist.")
    questions = read_jsonl(path)
    for q in questions:
        if not q.get("turns"):
            raise ValueError(f"Question {q.get('question_id')!r} in {path} has no turns.")
    return questions[:limit]


def render_chat(tokenizer, messages: list[dict]) -> torch.Tensor:
    """``[1, S]`` prompt ids of ``messages`` with the tokenizer's chat template and the assistant header."""
    if not tokenizer.chat_template:
        raise ValueError("The tokenizer has no chat template.")
    rendered = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    return rendered["input_ids"]
