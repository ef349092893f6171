"""The development set of non-chat prompts: a fixed slice of the self-distillation prompt corpus, by source.

Copy-heavy and task-specific prompts (summarisation, passage QA, open QA, maths, code) for measuring
speed per category beside MT-bench. These prompts must stay out of the training data of any heads
measured on them: ``python -m data_generation.generate ... --exclude benchmarks/data/dev_prompts.jsonl``.

    python -m benchmarks.dev_prompts --prompts train_prompts.jsonl --output benchmarks/data/dev_prompts.jsonl

Writes FastChat's question format (``question_id``, ``category``, ``turns``), so every MT-bench script
takes it with ``--questions``.
"""

import argparse
import json

# category -> sources, and prompts per category: the first ones of each source by their number in the id.
CATEGORIES = {
    "summarisation": ["cnn_dailymail"],
    "context_qa": ["p3_context_qa"],
    "open_qa": ["nq_open"],
    "maths": ["gsm8k_train"],
    "code": ["humaneval", "mbpp_plus"],
}
PER_CATEGORY = 16


def select(prompts: list[dict], per_category: int = PER_CATEGORY) -> list[dict]:
    """The development questions: ``per_category`` single-turn prompts per category, split evenly over its sources."""
    questions = []
    for category, sources in CATEGORIES.items():
        for k, source in enumerate(sources):
            share = per_category // len(sources) + (k < per_category % len(sources))
            rows = sorted((p for p in prompts if p["source"] == source and len(p["turns"]) == 1),
                          key=lambda p: int(p["id"].rsplit("-", 1)[1]))
            questions += [{"question_id": p["id"], "category": category, "turns": p["turns"]} for p in rows[:share]]
    return questions


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--prompts", required=True, help="the prompt corpus (JSONL: id, source, turns)")
    parser.add_argument("--output", required=True)
    parser.add_argument("--per-category", type=int, default=PER_CATEGORY)
    args = parser.parse_args(argv)
    with open(args.prompts, encoding="utf-8", newline="") as f:
        prompts = [json.loads(line) for line in f.read().split("\n") if line.strip()]
    questions = select(prompts, args.per_category)
    with open(args.output, "w", encoding="utf-8") as f:
        f.writelines(json.dumps(q, ensure_ascii=False) + "\n" for q in questions)
    print(f"{len(questions)} questions in {len(CATEGORIES)} categories -> {args.output}")


if __name__ == "__main__":
    main()
