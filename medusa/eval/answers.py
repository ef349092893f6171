"""FastChat answer files (``llm_judge/data/<bench>/model_answer/<model_id>.jsonl``) with per-turn timings.

One JSON line per question, as FastChat's ``gen_model_answer.py`` writes it: ``question_id``,
``answer_id``, ``model_id``, ``choices`` (``[{"index", "turns": [answer per turn]}]``) and
``tstamp``. Each choice also records, per turn, ``new_tokens`` (generated tokens, EOS included),
``steps`` (decoding steps: forwards after the prefill) and ``wall_time`` (seconds, device
synchronised before and after); FastChat's readers ignore these keys.

A decoder is a function ``decode(input_ids [1, S]) -> (new token ids, steps)``; see
:func:`medusa_decoder`, :func:`greedy_decoder` and :func:`hf_decoder`.
"""

import json
import os
import time
import uuid
from collections.abc import Callable

import torch
from tqdm import tqdm

from ..jsonl import jsonl_lines
from ..model.eos import eos_token_ids
from .questions import render_chat

Decoder = Callable[[torch.Tensor], tuple[list[int], int]]


def drain(generator) -> tuple[list[int], int]:
    """Drain a single prompt's ``medusa_generate`` stream: (all new token ids, steps)."""
    tokens, steps = [], 0
    for out in generator:
        tokens += out["new_token_ids"]
        steps += 1
    return tokens, steps


def medusa_decoder(model, **generate_kwargs) -> Decoder:
    """Medusa decoding (``model.medusa_generate``) with ``generate_kwargs`` (tree, temperature, limits)."""
    return lambda input_ids: drain(model.medusa_generate(input_ids, **generate_kwargs))


def greedy_decoder(model, **generate_kwargs) -> Decoder:
    """The library's one-token-per-step loop (``model.greedy_generate``) on the same cache machinery."""
    return lambda input_ids: drain(model.greedy_generate(input_ids, **generate_kwargs))


def hf_decoder(base_model, max_new_tokens: int, temperature: float = 0.0, eos_token_id=None, tokenizer=None) -> Decoder:
    """Hugging Face ``generate()`` on the base model; one step per new token, cut after the first EOS.

    ``eos_token_id``, ``tokenizer``: the stop tokens, read as the decode loop reads them
    (:func:`~medusa.model.eos.eos_token_ids`).
    """
    eos = eos_token_ids(base_model, eos_token_id, tokenizer)
    sample = {"do_sample": True, "temperature": temperature, "top_k": 0} if temperature > 0 else {"do_sample": False}

    @torch.inference_mode()
    def decode(input_ids: torch.Tensor) -> tuple[list[int], int]:
        out = base_model.generate(input_ids, attention_mask=torch.ones_like(input_ids), max_new_tokens=max_new_tokens,
                                  eos_token_id=eos or None, pad_token_id=next(iter(eos), None), **sample)
        tokens = out[0, input_ids.shape[1]:].tolist()
        end = next((i + 1 for i, t in enumerate(tokens) if t in eos), len(tokens))
        return tokens[:end], end

    return decode


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def answer_turns(decode: Decoder, tokenizer, turns: list[str], device: torch.device) -> dict:
    """Answer a multi-turn question; each later turn is asked after the earlier turns and answers.

    Returns:
        ``{"turns": [answer text], "new_tokens": [int], "steps": [int], "wall_time": [seconds]}``,
        answers without special tokens and stripped of surrounding whitespace.
    """
    record = {"turns": [], "new_tokens": [], "steps": [], "wall_time": []}
    messages = []
    for turn in turns:
        messages.append({"role": "user", "content": turn})
        input_ids = render_chat(tokenizer, messages).to(device)
        _synchronize(device)
        start = time.perf_counter()
        tokens, steps = decode(input_ids)
        _synchronize(device)
        record["wall_time"].append(time.perf_counter() - start)
        answer = tokenizer.decode(tokens, skip_special_tokens=True).strip()
        messages.append({"role": "assistant", "content": answer})
        record["turns"].append(answer)
        record["new_tokens"].append(len(tokens))
        record["steps"].append(steps)
    return record


def read_answers(path: str) -> dict:
    """``{question_id: answer line}`` of an answer file (later lines win; a line cut short by a kill is dropped)."""
    answers = {}
    if os.path.isfile(path):
        with open(path, encoding="utf-8", newline="") as f:
            for _, line in jsonl_lines(f.read()):
                try:
                    answer = json.loads(line)
                except json.JSONDecodeError:
                    continue
                answers[answer["question_id"]] = answer
    return answers


def write_answers(decode: Decoder, tokenizer, questions: list[dict], answer_file: str, model_id: str,
                  device: torch.device, num_choices: int = 1) -> int:
    """Answer the questions not yet in ``answer_file``, appending one whole line per question.

    Choice ``i`` runs after ``torch.manual_seed(i)`` (as FastChat does), so sampled answers are
    reproducible. At the end the file is rewritten sorted by question id, one line per id.

    Returns:
        the number of questions answered in this call.
    """
    done = read_answers(answer_file)
    todo = [q for q in questions if q["question_id"] not in done]
    os.makedirs(os.path.dirname(os.path.abspath(answer_file)), exist_ok=True)
    with open(answer_file, "a") as f:
        for question in tqdm(todo, desc=model_id):
            choices = []
            for i in range(num_choices):
                torch.manual_seed(i)
                choices.append({"index": i, **answer_turns(decode, tokenizer, question["turns"], device)})
            line = {"question_id": question["question_id"], "answer_id": uuid.uuid4().hex, "model_id": model_id,
                    "choices": choices, "tstamp": time.time()}
            f.write(json.dumps(line) + "\n")
            f.flush()
    sort_answer_file(answer_file)
    return len(todo)


def sort_answer_file(path: str) -> None:
    """Rewrite ``path`` sorted by question id with one line per id (FastChat's ``reorg_answer_file``)."""
    answers = read_answers(path)
    with open(path, "w") as f:
        for qid in sorted(answers):
            f.write(json.dumps(answers[qid]) + "\n")
