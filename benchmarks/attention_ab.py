"""Decode-step time with and without folding grouped query heads (medusa/model/attention.py).

On a random-weight Llama of a grouped-query shape (the 135M demo shape: 9 query heads over 3 key/value
heads), times CUDA-graph steps of the greedy loop and of Medusa at batch 1, and greedy steps of a
full batch, once with the query heads folded at every size (``fold_gqa=True``, ignoring
``FOLD_MIN_BYTES``) and once with Hugging Face's SDPA path (``repeat_kv``), in the same process.

    python -m benchmarks.attention_ab --shape 135m --output attention_ab.json
"""

import argparse
import json

import torch

from benchmarks.common import timed_generate
from medusa.eval.random_model import SHAPES, random_medusa
from medusa.model import attention


def ms_per_step(model, prompts: list[torch.Tensor], tree: str, new_tokens: int, fold_gqa: bool) -> float:
    """Milliseconds per step of decoding ``prompts`` together (timed as batch_speed.py times a call)."""
    _, steps, seconds = timed_generate(model, prompts, new_tokens, medusa_choices=tree, eos_token_id=[],
                                       fold_gqa=fold_gqa)
    return 1000 * seconds / steps


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shape", choices=sorted(SHAPES), default="135m")
    parser.add_argument("--prompt-len", type=int, default=300)
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=64, help="rows of the batched greedy timing")
    parser.add_argument("--device", default="cuda", help="cuda (bf16), or cpu (fp32) for a smoke test")
    parser.add_argument("--output")
    args = parser.parse_args(argv)
    cuda = args.device.startswith("cuda")
    model = random_medusa(args.shape, 5, torch.bfloat16 if cuda else torch.float32, args.device)
    gen = torch.Generator().manual_seed(1)
    prompts = [torch.randint(0, model.config.vocab_size, (args.prompt_len,), generator=gen).to(args.device)
               for _ in range(args.batch_size)]
    single = prompts[:1]
    result = {"shape": args.shape, "device": torch.cuda.get_device_name() if cuda else "cpu",
              "prompt_len": args.prompt_len, "new_tokens": args.new_tokens, "batch_size": args.batch_size}
    threshold = attention.FOLD_MIN_BYTES
    attention.FOLD_MIN_BYTES = 0  # "folded" folds at every size, whatever the library's threshold
    try:
        for name, fold in (("folded", True), ("repeat_kv", False)):
            result[name] = {"greedy_b1_ms": ms_per_step(model, single, "none", args.new_tokens, fold),
                            "medusa_b1_ms": ms_per_step(model, single, "mc_sim_7b_63", args.new_tokens, fold),
                            f"greedy_b{args.batch_size}_ms": ms_per_step(model, prompts, "none", args.new_tokens, fold)}
            print(name, json.dumps(result[name]), flush=True)
    finally:
        attention.FOLD_MIN_BYTES = threshold
    if args.output:
        with open(args.output, "w") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
