"""Answer a FastChat question file (default MT-bench) without Medusa, timing every turn: the baseline.

``--mode greedy`` (default) runs the library's one-token-per-step loop (``greedy_generate``: the same
KV cache and CUDA-graph machinery as Medusa, so the speedup measures the heads alone); ``--mode hf``
runs Hugging Face ``generate()`` on the base model. The same answer format and timings as
gen_model_answer_medusa.py; resumable.

The model is either a heads directory (``--model``, its base or ``--base-model`` is used; the heads
are loaded but not used) or a plain base model (``--base-model`` only; the greedy loop then runs
with one shared-lm_head head, which adds one d x d block and nothing to the decoding).

    python llm_judge/gen_model_answer_baseline.py --base-model BASE_DIR --mode greedy --model-id my-base
"""

import os

from transformers import AutoModelForCausalLM

from medusa.eval.answer_cli import answer_parser, main_guard, model_dtype, run
from medusa.eval.answers import greedy_decoder, hf_decoder
from medusa.model import MedusaConfig, MedusaModel


def main(argv: list[str] | None = None) -> None:
    parser = answer_parser(__doc__)
    parser.add_argument("--model", help="Medusa heads directory (optional: --base-model alone is enough)")
    parser.add_argument("--mode", choices=["greedy", "hf"], default="greedy")
    args = parser.parse_args(argv)
    if args.model:
        model = MedusaModel.from_pretrained(args.model, base_model=args.base_model, dtype=model_dtype(args))
    elif args.base_model:
        if not os.path.isdir(args.base_model):
            raise FileNotFoundError(f"Base model directory {args.base_model!r} does not exist.")
        base = AutoModelForCausalLM.from_pretrained(args.base_model, dtype=model_dtype(args))
        model = MedusaModel(base.requires_grad_(False), MedusaConfig(medusa_num_heads=1, head_type="shared_lm_head"))
    else:
        parser.error("give --base-model or --model")
    model = model.to(args.device).eval()
    tokenizer = model.get_tokenizer()

    def make_decoder(max_new_tokens: int):
        if args.mode == "hf":
            return hf_decoder(model.base_model, max_new_tokens, args.temperature, tokenizer=tokenizer)
        return greedy_decoder(model, temperature=args.temperature, max_new_tokens=max_new_tokens)

    name = os.path.basename(os.path.normpath(args.base_model or model.config.base_model_name_or_path))
    run(args, make_decoder, tokenizer, args.model_id or f"{name}-{args.mode}")


if __name__ == "__main__":
    main_guard(main)
