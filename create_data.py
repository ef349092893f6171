"""Self-distillation data from a running TGI server (the published Medusa interface).

    python create_data.py --input-filename ShareGPT.json --output-filename distilled.jsonl \
        --url http://localhost:8080 --concurrency 64

A thin front to ``python -m data_generation.generate`` (its OpenAI-compatible back end; TGI serves
``/v1/chat/completions``). See that script for the output format, resuming and the other options.
"""

import argparse
import sys

from data_generation.generate import main as generate, positive_int, temperature


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--input-filename", required=True, help="ShareGPT JSON or our prompts JSONL.")
    p.add_argument("--output-filename", required=True, help="JSONL of conversations (resumed if it exists).")
    p.add_argument("--url", default="http://localhost:8080", help="TGI (or any OpenAI-compatible) server.")
    p.add_argument("--concurrency", type=positive_int, default=64, help="Requests in flight.")
    p.add_argument("--model", default="tgi", help="Model name sent to the server (TGI ignores it).")
    p.add_argument("--max-new-tokens", type=positive_int, default=1024)
    p.add_argument("--temperature", type=temperature, default=0.0)
    args = p.parse_args(argv)
    return generate(["--input", args.input_filename, "--output", args.output_filename, "--url", args.url,
                     "--model", args.model, "--concurrency", str(args.concurrency),
                     "--max-new-tokens", str(args.max_new_tokens), "--temperature", str(args.temperature)])


if __name__ == "__main__":
    sys.exit(main())
