"""Peak host memory of the Medusa head loss, forward and backward, on the CPU (Linux).

Random bf16 head logits ``[heads, batch, seq, vocab]`` (the demo model's vocabulary by default) with a
fraction of positions carrying a target, as on chat data where only assistant tokens count.
``--losses-file`` measures another version of ``medusa/train/losses.py``:

    git show 68fe87e:medusa/train/losses.py > /tmp/old_losses.py
    python -m benchmarks.loss_memory --losses-file /tmp/old_losses.py
    python -m benchmarks.loss_memory
"""

import argparse

import torch

from benchmarks.common import load_module_file, peak_added
from medusa.train import losses


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--heads", type=int, default=3)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seq", type=int, default=1024)
    parser.add_argument("--vocab", type=int, default=49152)
    parser.add_argument("--targets", type=float, default=0.3, help="fraction of positions with a target")
    parser.add_argument("--losses-file", help="a losses.py to measure in place of this checkout's")
    args = parser.parse_args()
    # named inside medusa.train, so its relative imports resolve to this checkout's modules
    module = load_module_file("medusa.train.other_losses", args.losses_file) if args.losses_file else losses
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(args.heads, args.batch, args.seq, args.vocab, generator=generator).bfloat16().requires_grad_()
    labels = torch.randint(args.vocab, (args.batch, args.seq), generator=generator)
    labels[torch.rand(args.batch, args.seq, generator=generator) >= args.targets] = losses.IGNORE_INDEX
    _, added = peak_added(lambda: module.medusa_head_losses(logits, labels)[0].sum().backward())
    print(f"{args.heads} heads x {args.batch} x {args.seq} x {args.vocab}, {args.targets:.0%} targets"
          f"{', ' + args.losses_file if args.losses_file else ''}: loss and backward added "
          f"{added:.2f} GiB; logits {logits.numel() * 2 / 2**30:.2f} GiB")


if __name__ == "__main__":
    main()
