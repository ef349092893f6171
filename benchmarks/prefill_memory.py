"""Peak host memory of one batched prefill of the demo model on the CPU (Linux), with or without ``fold_gqa``.

The figure is what the prefill itself adds to the peak resident size (the model and the cache are
loaded before). ``--attention-file`` registers another version of
``medusa/model/attention.py`` first, to compare with an older rule for when to fold:

    git show 32f45ff~1:medusa/model/attention.py > /tmp/old_attention.py
    python -m benchmarks.prefill_memory --attention-file /tmp/old_attention.py
    python -m benchmarks.prefill_memory
"""

import argparse

import torch

from benchmarks.common import load_module_file, peak_added
from medusa import demo
from medusa.model.generate import prefill
from medusa.model.kv_cache import MedusaKVCache


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=8)
    parser.add_argument("--length", type=int, default=2000, help="tokens per prompt")
    parser.add_argument("--no-fold", action="store_true", help="prefill without fold_gqa")
    parser.add_argument("--attention-file", help="an attention.py to register in place of this checkout's")
    args = parser.parse_args()
    if args.attention_file:  # registering under the same name replaces this checkout's function
        load_module_file("other_attention", args.attention_file)
    model = demo.load_demo(dtype=torch.float32)
    generator = torch.Generator().manual_seed(0)
    prompts = [torch.randint(100, 40000, (args.length,), generator=generator) for _ in range(args.rows)]
    cache = MedusaKVCache.for_model(model.base_model, args.length + 64, args.rows)
    with torch.no_grad():
        _, added = peak_added(lambda: prefill(model, prompts, cache, fold_gqa=not args.no_fold))
    print(f"{args.rows} x {args.length} tokens, fold_gqa={not args.no_fold}"
          f"{', ' + args.attention_file if args.attention_file else ''}: the prefill's peak added {added:.2f} GiB")


if __name__ == "__main__":
    main()
