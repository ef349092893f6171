"""GPU check of batched decoding: graph-replayed batches equal eager batches and each prompt decoded alone.

Random-weight 135M-shaped Llama with random heads, fp32 (so kernel choice cannot flip an argmax),
prompts of different lengths, and an "EOS" that some rows emit early so that finished rows leave
the batch (power-of-two batches, one CUDA graph each).

    python -m benchmarks.gpu_batch_check
"""

import torch

from medusa.eval.random_model import random_medusa

model = random_medusa("135m", 4, torch.float32)
gen = torch.Generator().manual_seed(0)
prompts = [torch.randint(0, 49152, (int(n),), generator=gen).cuda() for n in torch.randint(5, 200, (11,), generator=gen)]
for tree in ("none", "mc_sim_7b_63"):
    alone = [model.generate([p], max_new_tokens=48, medusa_choices=tree, eos_token_id=[], cuda_graph=False)[0]
             for p in prompts]
    counts = {}
    for out in alone:
        for token in set(out[:30]):
            counts[token] = counts.get(token, 0) + 1
    eos = max((t for t, c in counts.items() if c < len(prompts)), key=lambda t: counts[t])
    expected = [out[: out.index(eos) + 1] if eos in out else out for out in alone]
    for cuda_graph in (False, True):
        batched = model.generate(prompts, max_new_tokens=48, medusa_choices=tree, eos_token_id=eos, cuda_graph=cuda_graph)
        same = sum(a == b for a, b in zip(batched, expected))
        print(f"tree {tree} cuda_graph {cuda_graph}: {same}/{len(prompts)} rows equal to the prompt decoded alone "
              f"(row lengths {sorted(map(len, expected))})", flush=True)
