"""Answer a FastChat question file (default MT-bench) with Medusa decoding, timing every turn.

Writes FastChat's answer format plus per-turn ``new_tokens``, ``steps`` and ``wall_time`` (see
medusa/eval/answers.py); resumable: questions already in the answer file are skipped.

    python llm_judge/gen_model_answer_medusa.py --model HEADS_DIR [--base-model BASE_DIR] --model-id my-medusa
"""

import os

from medusa.eval.answer_cli import answer_parser, main_guard, model_dtype, run
from medusa.eval.answers import medusa_decoder
from medusa.model import MedusaModel


def main(argv: list[str] | None = None) -> None:
    parser = answer_parser(__doc__)
    parser.add_argument("--model", required=True, help="Medusa heads directory (any layout MedusaModel reads)")
    parser.add_argument("--medusa-choices", help="tree: preset name, JSON list or JSON file (default: the default preset)")
    args = parser.parse_args(argv)
    model = MedusaModel.from_pretrained(args.model, base_model=args.base_model, dtype=model_dtype(args))
    model = model.to(args.device).eval()

    def make_decoder(max_new_tokens: int):
        return medusa_decoder(model, temperature=args.temperature, max_new_tokens=max_new_tokens,
                              medusa_choices=args.medusa_choices)

    run(args, make_decoder, model.get_tokenizer(), args.model_id or os.path.basename(os.path.normpath(args.model)))


if __name__ == "__main__":
    main_guard(main)
