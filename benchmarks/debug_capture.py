"""Find host synchronisations inside the decode step: runs one eager step per tree and batch size with CUDA sync debugging on."""

import traceback

import torch

from benchmarks.step_overhead import random_medusa
from medusa.model.generate import _forward, tree_step

model = random_medusa("135m", 5, torch.bfloat16)
for batch in (1, 4):
    prompt = torch.randint(0, 49152, (batch, 64), device="cuda")
    for tree in ("none", "mc_sim_7b_63"):
        buffers = model.tree_buffers(tree)
        with torch.inference_mode(), model.decode_cache(256, batch) as (cache, _):
            hidden = _forward(model, prompt, torch.ones(64, 64, dtype=torch.bool, device="cuda").tril(),
                              torch.arange(64, device="cuda").expand(batch, -1), cache)[:, -1]
            cache.commit(64)
            root, head_logits = model.lm_logits(hidden).argmax(-1), model.head_logits(hidden).transpose(0, 1)
            active = torch.ones(batch, dtype=torch.bool, device="cuda")
            torch.cuda.synchronize()
            torch.cuda.set_sync_debug_mode("error")
            try:
                tree_step(model, buffers, cache, root, head_logits, active)
                print(f"batch {batch} tree {tree}: no sync in the step")
            except Exception:
                traceback.print_exc()
            torch.cuda.set_sync_debug_mode(0)
