"""Peak host memory of one batched prefill of the demo model on the CPU (Linux), with or without ``fold_gqa``.

Resets the process's peak resident size (``/proc/self/clear_refs``) after loading the model, so the
figure is what the prefill itself adds. ``--attention-file`` registers another version of
``medusa/model/attention.py`` first, to compare with an older rule for when to fold:

    git show 32f45ff~1:medusa/model/attention.py > /tmp/old_attention.py
    python benchmarks/prefill_memory.py --attention-file /tmp/old_attention.py
    python benchmarks/prefill_memory.py
"""

import argparse
import importlib.util

import torch

from medusa import demo
from medusa.model.generate import prefill
from medusa.model.kv_cache import MedusaKVCache


def resident_gib(field: str) -> float:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field)) / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=8)
    parser.add_argument("--length", type=int, default=2000, help="tokens per prompt")
    parser.add_argument("--no-fold", action="store_true", help="prefill without fold_gqa")
    parser.add_argument("--attention-file", help="an attention.py to register in place of this checkout's")
    args = parser.parse_args()
    if args.attention_file:  # registering under the same name replaces this checkout's function
        spec = importlib.util.spec_from_file_location("other_attention", args.attention_file)
        spec.loader.exec_module(importlib.util.module_from_spec(spec))
    model = demo.load_demo(dtype=torch.float32)
    generator = torch.Generator().manual_seed(0)
    prompts = [torch.randint(100, 40000, (args.length,), generator=generator) for _ in range(args.rows)]
    cache = MedusaKVCache.for_model(model.base_model, args.length + 64, args.rows)
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # the peak (VmHWM) starts again from the current resident size
    before = resident_gib("VmRSS:")
    with torch.no_grad():
        prefill(model, prompts, cache, fold_gqa=not args.no_fold)
    print(f"{args.rows} x {args.length} tokens, fold_gqa={not args.no_fold}"
          f"{', ' + args.attention_file if args.attention_file else ''}: "
          f"the prefill's peak added {resident_gib('VmHWM:') - before:.2f} GiB")


if __name__ == "__main__":
    main()
