"""Per-step cost of the decode loop on a GPU: eager vs CUDA graph, greedy vs Medusa, random weights.

Checks first that the graph-captured loop gives the same tokens as the eager loop and as Hugging Face
``generate``; then times one greedy step (root-only tree) and one Medusa step (a 64-token tree) and
reports the per-step overhead c = medusa_step / greedy_step - 1.

    python -m benchmarks.step_overhead --shape 7b --output step_overhead.json
"""

import argparse

from benchmarks.common import COMPILE_STEP, measure_step_overhead, print_and_save
from medusa.eval.random_model import SHAPES

def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shape", choices=sorted(SHAPES), default="7b")
    parser.add_argument("--tree", default="mc_sim_7b_63")
    parser.add_argument("--prompt-len", type=int, default=128)
    parser.add_argument("--new-tokens", type=int, default=256)
    parser.add_argument("--device", default="cuda", help="cuda (bf16, eager and graph) or cpu (fp32, eager: a smoke test)")
    parser.add_argument("--compile-step", choices=list(COMPILE_STEP), default="default",
                        help="medusa_generate's compile_step: default (None: compiled where the step is a CUDA graph), on or off")
    parser.add_argument("--output")
    args = parser.parse_args()
    result = measure_step_overhead(args.shape, args.tree, args.prompt_len, args.new_tokens, args.device, COMPILE_STEP[args.compile_step])
    print_and_save(result, args.output)


if __name__ == "__main__":
    main()
