"""Whether a fine-tuned backbone (Medusa-2) still answers as its original model: teacher-forced on the
original's own greedy answers, the share of answer positions where both models' top-1 tokens agree, and
the mean per-token KL(original ‖ fine-tuned), overall and per question category.

    python -m medusa.eval.agreement --model MEDUSA2_DIR --questions benchmarks/data/dev_prompts.jsonl \\
        --max-new-tokens 256 --output agreement.json
"""

import argparse
import json
import os
from collections import defaultdict

import torch
from tqdm import tqdm
from transformers import AutoModelForCausalLM

from medusa.model import MedusaModel, checkpoint
from medusa.model.lora import is_adapter

from .answer_cli import main_guard, model_dtype
from .heads_accuracy import greedy_continuations
from .questions import DEFAULT_QUESTIONS, load_questions, render_chat


@torch.inference_mode()
def answer_agreement(original, tuned, sequence: torch.Tensor, prompt_len: int) -> tuple[int, int, float]:
    """``(positions, top-1 agreements, summed KL(original ‖ tuned))`` over the answer tokens of ``sequence [S]``.

    Both models see the same ids; position t's next-token distributions are compared for every answer
    token t + 1 (the last prompt position included, the last answer token excluded).
    """
    device = original.get_output_embeddings().weight.device
    ids = sequence[None].to(device)
    p = original(ids).logits[0, prompt_len - 1 : -1].float().log_softmax(-1)  # [A, V]
    q = tuned(ids).logits[0, prompt_len - 1 : -1].float().log_softmax(-1)
    agree = (p.argmax(-1) == q.argmax(-1)).sum().item()
    kl = (p.exp() * (p - q)).sum(-1).sum().item()
    return p.shape[0], agree, kl


def summarize(counts: list[float]) -> dict:
    """``counts`` = [positions, agreements, summed KL] as figures."""
    positions, agree, kl = counts
    return {"positions": int(positions), "top1_agreement": agree / positions if positions else None,
            "kl_per_token": kl / positions if positions else None}


@torch.inference_mode()
def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="Medusa-2 checkpoint (heads + adapter/) or full fine-tuned model.")
    parser.add_argument("--original-model", help="The original base model directory (default: the one the "
                                                 "checkpoint's config names).")
    parser.add_argument("--questions", default=DEFAULT_QUESTIONS, help="Question JSONL (first turns are used).")
    parser.add_argument("--limit", type=int, help="Use only the first N questions.")
    parser.add_argument("--max-new-tokens", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=16, help="Prompts per greedy-answer batch.")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default="auto", choices=["auto", "float32", "float16", "bfloat16"])
    parser.add_argument("--output", help="Write the figures as JSON here.")
    args = parser.parse_args(argv)
    for name in ("max_new_tokens", "batch_size", "limit"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1.")

    dtype = model_dtype(args)
    has_adapter = is_adapter(os.path.join(args.model, checkpoint.ADAPTER_DIR))
    if not has_adapter and not args.original_model:
        parser.error(f"{args.model} holds no LoRA adapter: pass the original model with --original-model.")
    # A LoRA checkpoint's backbone is the original plus the adapter: --original-model is its base too.
    tuned = MedusaModel.from_pretrained(args.model, base_model=args.original_model if has_adapter else None,
                                        dtype=dtype).to(args.device).eval()
    original_path = args.original_model or tuned.config.base_model_name_or_path
    original = AutoModelForCausalLM.from_pretrained(original_path, dtype=dtype).to(args.device).eval()
    tokenizer = tuned.get_tokenizer()
    questions = load_questions(args.questions, args.limit)
    prompts = [render_chat(tokenizer, [{"role": "user", "content": q["turns"][0]}]) for q in questions]
    sequences = greedy_continuations(original, prompts, args.max_new_tokens, args.batch_size, tokenizer)
    counts = defaultdict(lambda: [0, 0, 0.0])
    for question, prompt, sequence in tqdm(list(zip(questions, prompts, sequences)), desc="teacher-forced"):
        figures = answer_agreement(original, tuned.base_model, sequence, prompt.shape[1])
        for key in ("all", f"category {question['category']}" if "category" in question else None):
            if key is not None:
                counts[key] = [a + b for a, b in zip(counts[key], figures)]
    result = {"model": args.model, "original_model": original_path, "questions": len(questions),
              "max_new_tokens": args.max_new_tokens, "dtype": str(dtype).removeprefix("torch."),
              **summarize(counts.pop("all")), "categories": {c.removeprefix("category "): summarize(v) for c, v in sorted(counts.items())}}
    print(f"top-1 agreement {result['top1_agreement']:.4f} over {result['positions']} answer positions, "
          f"KL(original ‖ tuned) {result['kl_per_token']:.5f} per token")
    for category, figures in result["categories"].items():
        print(f"  {category}: {figures['top1_agreement']:.4f} ({figures['positions']} positions), "
              f"KL {figures['kl_per_token']:.5f}")
    if args.output:
        with open(args.output, "w") as f:
            json.dump(result, f, indent=1)
    return result


if __name__ == "__main__":
    main_guard(main)
