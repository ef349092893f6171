"""Self-distillation data: the base model answers the training prompts itself.

Input: our JSONL (``{"id", "turns": [...]}`` per line) or ShareGPT JSON
(``[{"id"?, "conversations": [{"from", "value"}, ...]}]``; only the user turns are kept). Every user turn
of a multi-turn prompt is replayed: the model answers turn 1, then turn 2 with its own answer in context, ...

Output: JSONL, one line per finished conversation, ``{"id", "sample", "messages": [{"role", "content"}, ...]}``.
Append-only and resumable: a rerun skips the (id, sample) pairs already written; lines are written whole,
so an interrupted run loses at most the conversations in flight.

Run from the repository root (``data_generation`` is not part of the installed package):

    python -m data_generation.generate --model path/to/model --input prompts.jsonl --output distilled.jsonl
    python -m data_generation.generate --url http://localhost:8000 --model served-name --concurrency 64 ...
"""

import argparse
import asyncio
import json
import math
import os
import sys
import time
from dataclasses import dataclass

import torch
from tqdm import tqdm

from data_generation.backends import LocalBackend, OpenAIBackend
from medusa.jsonl import parse_jsonl
from medusa.train.data import read_records

USER_SPEAKERS = {"human", "user"}


@dataclass(frozen=True)
class Job:
    id: str
    sample: int
    turns: tuple[str, ...]


def read_prompts(path: str) -> list[tuple[str, tuple[str, ...]]]:
    """``(id, user turns)`` of every prompt in our JSONL or ShareGPT JSON."""
    if not os.path.isfile(path):
        raise SystemExit(f"Prompt file {path!r} does not exist.")
    try:
        records = read_records(path)
    except ValueError as e:
        raise SystemExit(str(e)) from None
    prompts = []
    for i, r in enumerate(records):
        if not isinstance(r, dict):
            raise SystemExit(f"{path}: record {i} is not a JSON object.")
        if "turns" in r:
            turns = tuple(r["turns"])
        elif "conversations" in r:
            turns = tuple(t["value"] for t in r["conversations"] if t.get("from") in USER_SPEAKERS)
        else:
            raise SystemExit(f"{path}: record {i} has neither 'turns' nor 'conversations'.")
        if turns:
            prompts.append((str(r.get("id", r.get("question_id", i))), turns))
    if len(prompts) < len(records):
        print(f"{path}: {len(records) - len(prompts)} of {len(records)} records have no user turn; skipped.",
              file=sys.stderr)
    return prompts


def finished_keys(path: str) -> set[tuple[str, int]]:
    """(id, sample) pairs already in ``path``; a partial last line (a killed writer) is cut off first."""
    if not os.path.exists(path):
        return set()
    with open(path, "rb+") as f:
        data = f.read()
        if data and not data.endswith(b"\n"):
            f.truncate(data.rfind(b"\n") + 1)
            data = data[: data.rfind(b"\n") + 1]
    try:
        records = parse_jsonl(data.decode("utf-8"), path)
    except ValueError as e:
        raise SystemExit(str(e)) from None
    return {(str(r["id"]), int(r.get("sample", 0))) for r in records}


class Writer:
    """Appends whole JSON lines, flushed one by one; the progress bar counts them, and generated tokens."""

    def __init__(self, path: str, total: int):
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        self.file = open(path, "a", encoding="utf-8")
        self.progress = tqdm(total=total, unit="conv", dynamic_ncols=True)
        self.tokens, self.start, self.shown = 0, time.time(), 0.0

    def count(self, tokens: int) -> None:
        """Adds generated tokens: as they are decoded (local back end), or per reply (server)."""
        self.tokens += tokens
        now = time.time()
        if now - self.shown >= 0.5:  # a decoding step can take a millisecond: redraw at most twice a second
            self.shown = now
            self.progress.set_postfix(tokens=self.tokens, tok_s=f"{self.tokens / max(now - self.start, 1e-9):.1f}")

    def write(self, job: Job, messages: list[dict]) -> None:
        line = json.dumps({"id": job.id, "sample": job.sample, "messages": messages}, ensure_ascii=False) + "\n"
        self.file.write(line)
        self.file.flush()
        self.progress.update(1)

    def close(self) -> None:
        self.progress.close()
        self.file.close()


def opening(system: str | None) -> list[dict]:
    return [{"role": "system", "content": system}] if system else []


def run_local(backend: LocalBackend, jobs: list[Job], system: str | None, writer: Writer) -> None:
    """Groups of conversations; turn j of every conversation in a group that has one is answered together.

    A group holds eight batches, so the back end keeps a full batch decoding while the group's turn
    lasts. Within a group, conversations start shortest first: rows decoding together then have
    alike lengths, and every row attends over the slots its longest neighbour needs. Groups keep
    the input's order, so a run stopped early has no bias towards short prompts. A conversation is
    written as soon as its last turn is answered: an interrupted run loses only the replies in flight.
    """
    group = 8 * backend.batch_size
    for start in range(0, len(jobs), group):
        batch = sorted(jobs[start:start + group], key=lambda job: sum(map(len, job.turns)))
        conversations = [opening(system) for _ in batch]
        for turn in range(max(len(j.turns) for j in batch)):
            active = [i for i, j in enumerate(batch) if turn < len(j.turns)]
            for i in active:
                conversations[i].append({"role": "user", "content": batch[i].turns[turn]})
            for a, reply in backend.answers([conversations[i] for i in active], writer.count):
                i = active[a]
                conversations[i].append({"role": "assistant", "content": reply})
                if turn == len(batch[i].turns) - 1:
                    writer.write(batch[i], conversations[i])


async def run_server(backend: OpenAIBackend, jobs: list[Job], system: str | None, writer: Writer) -> None:
    """Every conversation as its own task; the backend bounds how many requests are in flight."""

    async def converse(job: Job):
        messages = opening(system)
        for turn in job.turns:
            messages.append({"role": "user", "content": turn})
            reply, n = await backend.answer_one(messages)
            messages.append({"role": "assistant", "content": reply})
            writer.count(n)
        return job, messages

    tasks = [asyncio.ensure_future(converse(job)) for job in jobs]
    try:
        for finished in asyncio.as_completed(tasks):
            writer.write(*await finished)
    finally:
        for task in tasks:
            task.cancel()
        await backend.aclose()


def positive_int(text: str) -> int:
    """argparse type: an integer of at least 1."""
    value = int(text)  # a ValueError reads "invalid positive_int value: ..."
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1; got {value}")
    return value


def temperature(text: str) -> float:
    """argparse type: a finite temperature >= 0 (0 is greedy)."""
    value = float(text)
    if not (math.isfinite(value) and value >= 0):
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0; got {text}")
    return value


def device_problem(name: str) -> str | None:
    """Why ``--device name`` cannot be used here, or None."""
    try:
        device = torch.device(name)
    except RuntimeError:
        return f"{name!r} is not a device (cpu, cuda, cuda:1, mps, ...)"
    try:
        torch.empty(0, device=device)
    except (RuntimeError, AssertionError, NotImplementedError):  # what torch raises varies with the build
        return f"{name!r} is not available on this machine"
    return None


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--input", required=True, help="Prompts: JSONL with id/turns, or ShareGPT JSON.")
    p.add_argument("--output", required=True, help="JSONL to append conversations to (resumed if it exists).")
    p.add_argument("--model", required=True, help="Local model directory, or the served model name with --url.")
    p.add_argument("--url", help="OpenAI-compatible server (vLLM, TGI); without it the model runs locally.")
    p.add_argument("--api-key", default=os.environ.get("OPENAI_API_KEY"))
    p.add_argument("--temperature", type=temperature, default=0.0, help="0 = greedy.")
    p.add_argument("--max-new-tokens", type=positive_int, default=1024, help="Per assistant turn.")
    p.add_argument("--samples", type=positive_int, default=1, help="Answers per prompt (use temperature > 0).")
    p.add_argument("--batch-size", type=positive_int, default=16,
                   help="Local back end: conversations decoded at once; a finished one makes room for the next "
                        "(on a GPU, 64-256 keeps it busy). Output is written every 8 batches.")
    p.add_argument("--concurrency", type=positive_int, default=32, help="Server back end: requests in flight.")
    p.add_argument("--system", help="System message put before every conversation.")
    p.add_argument("--limit", type=positive_int, help="Only the first N prompts.")
    p.add_argument("--exclude", action="append", default=[], metavar="FILE",
                   help="Held-out prompts (same formats, e.g. benchmarks/data/dev_prompts.jsonl): a prompt with one "
                        "of their ids or first turns is skipped. Repeatable.")
    p.add_argument("--device", help="Local back end: cuda, cpu, ... (default: cuda if available).")
    p.add_argument("--dtype", choices=["auto", "float32", "float16", "bfloat16"], default="auto",
                   help="Local back end: auto (bf16 on GPU, fp32 on CPU) or a dtype.")
    p.add_argument("--seed", type=int, default=0, help="Local back end: seed of the sampling generator.")
    args = p.parse_args(argv)
    if args.device and not args.url and (problem := device_problem(args.device)):
        p.error(f"argument --device: {problem}")
    return args


def held_out(prompts: list[tuple[str, tuple[str, ...]]], paths: list[str]) -> list[tuple[str, tuple[str, ...]]]:
    """``prompts`` without those whose id or first turn one of the files at ``paths`` holds (said on stderr)."""
    if not paths:
        return prompts
    excluded = [p for path in paths for p in read_prompts(path)]
    ids, firsts = {pid for pid, _ in excluded}, {turns[0] for _, turns in excluded}
    kept = [(pid, turns) for pid, turns in prompts if pid not in ids and turns[0] not in firsts]
    print(f"{len(prompts) - len(kept)} of {len(prompts)} prompts held out by {', '.join(paths)}.", file=sys.stderr)
    return kept


def main(argv=None) -> int:
    args = parse_args(argv)
    prompts = held_out(read_prompts(args.input), args.exclude)[: args.limit]
    done = finished_keys(args.output)
    jobs = [Job(pid, s, turns) for pid, turns in prompts for s in range(args.samples) if (pid, s) not in done]
    print(f"{len(prompts) * args.samples} conversations asked, {len(done)} already in {args.output}, "
          f"{len(jobs)} to generate.", file=sys.stderr)
    if not jobs:
        return 0
    if args.url:
        backend = OpenAIBackend(args.url, args.model, args.temperature, args.max_new_tokens, args.concurrency,
                                args.api_key)
    else:
        try:
            backend = LocalBackend(args.model, args.temperature, args.max_new_tokens, args.device, args.dtype, args.seed,
                                   args.batch_size)
        except OSError as e:
            raise SystemExit(f"Cannot load {args.model!r}: {str(e).splitlines()[0]}") from None
        except KeyboardInterrupt:
            print(f"\nInterrupted while loading {args.model!r}; nothing generated.", file=sys.stderr)
            return 130
    writer = Writer(args.output, len(jobs))
    try:
        if args.url:
            asyncio.run(run_server(backend, jobs, args.system, writer))
        else:
            run_local(backend, jobs, args.system, writer)
    except KeyboardInterrupt:
        print(f"\nInterrupted; finished conversations are in {args.output}, rerun to resume.", file=sys.stderr)
        return 130
    except RuntimeError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    finally:
        writer.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
