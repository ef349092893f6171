"""What ``compile_step=True`` costs before the first token, and what PyTorch's caches save in a second process.

Loads a model, then on the first MT-bench question: one compiled generation (its first step compiles
every variant it reaches; timed to the first token and to the end), a second compiled generation
(steady state) and an uncompiled CUDA-graph generation for reference, for the greedy loop and the
default tree. Run it twice with the same ``TORCHINDUCTOR_CACHE_DIR``: the second process shows what
the on-disk caches (inductor's FX graph cache, AOTAutograd's cache) leave of the compile time. With
``--artifacts FILE``, the portable cache (``torch.compiler.save_cache_artifacts``) is loaded from FILE
when it exists, else saved there at the end. With ``--background``, ``compile_step="background"`` instead
(compiled in the background while the graph step serves): the first token of each loop, the wait until
every variant requested is compiled, and two generations after.

    TORCHINDUCTOR_CACHE_DIR=/tmp/ic python -m benchmarks.compile_start --model medusa/demo_heads --base-model DIR
"""

import argparse
import json
import os
import time

import torch

from benchmarks.common import print_and_save, timed
from medusa.eval.questions import DEFAULT_QUESTIONS, load_questions, render_chat
from medusa.model import MedusaModel


def generation(model, prompt, tree, new_tokens, compile_step):
    """Seconds to the first yielded step (prefill + first step) and to the end, and the steps."""
    synchronize = torch.cuda.synchronize
    synchronize()
    start = time.perf_counter()
    stream = model.medusa_generate(prompt, max_new_tokens=new_tokens, medusa_choices=tree, compile_step=compile_step,
                                   eos_token_id=[])
    next(stream)
    synchronize()
    first = time.perf_counter() - start
    steps = 1 + sum(1 for _ in stream)
    synchronize()
    return {"first_token_s": first, "total_s": time.perf_counter() - start, "steps": steps}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--base-model")
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--artifacts", help="portable compile cache: loaded if the file exists, else saved there")
    parser.add_argument("--background", action="store_true",
                        help="time compile_step=\"background\" instead: the first "
                             "token, the wait until the compiled variants are ready, and the steps after")
    parser.add_argument("--output")
    args = parser.parse_args()

    result = {"torch": torch.__version__, "inductor_cache_dir": os.environ.get("TORCHINDUCTOR_CACHE_DIR")}
    if args.artifacts and os.path.exists(args.artifacts):
        with open(args.artifacts, "rb") as f:
            _, result["artifacts_load_s"] = timed(lambda: torch.compiler.load_cache_artifacts(f.read()))
    model, result["load_s"] = timed(lambda: MedusaModel.from_pretrained(
        args.model, base_model=args.base_model, dtype=torch.bfloat16).cuda().eval())
    question = load_questions(DEFAULT_QUESTIONS, 1)[0]
    prompt = render_chat(model.get_tokenizer(), [{"role": "user", "content": question["turns"][0]}]).cuda()
    if args.background:  # the graph step serves at once; the compiled one takes over when ready
        for label, tree in (("greedy", "none"), ("medusa", None)):
            result[f"{label}_default_first"] = generation(model, prompt, tree, args.new_tokens, "background")
            print(label, "default_first", json.dumps(result[f"{label}_default_first"]), flush=True)
        _, result["compile_wait_s"] = timed(model.cache_pool.compiler.wait)
    runs = ((("default_compiled", "background"), ("default_again", "background")) if args.background else
            (("compiled_first", True), ("compiled_again", True), ("graph", False), ("graph_again", False)))
    for label, tree in (("greedy", "none"), ("medusa", None)):
        for name, compile_step in runs:
            result[f"{label}_{name}"] = run = generation(model, prompt, tree, args.new_tokens, compile_step)
            run["ms_per_step"] = 1000 * (run["total_s"] - run["first_token_s"]) / (run["steps"] - 1)  # after the first
            print(label, name, json.dumps(run), flush=True)
    for kind in ("default_again",) if args.background else ("compiled_again", "graph_again"):
        result[f"c_{kind}"] = result[f"medusa_{kind}"]["ms_per_step"] / result[f"greedy_{kind}"]["ms_per_step"] - 1
    if args.artifacts and not os.path.exists(args.artifacts):
        saved = torch.compiler.save_cache_artifacts()
        if saved is not None:
            with open(args.artifacts, "wb") as f:
                f.write(saved[0])
            result["artifacts_bytes"] = len(saved[0])
    print_and_save(result, args.output)


if __name__ == "__main__":
    main()
