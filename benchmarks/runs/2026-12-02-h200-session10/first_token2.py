"""A chat CLI's first reply: load the demo, then time the default generation (Medusa tree, copy branches,
library defaults) from the call to its first token, for the first prompt and a second one."""
import json, time
t0 = time.perf_counter()
import torch
from medusa.model import MedusaModel
from medusa.eval.questions import DEFAULT_QUESTIONS, load_questions, render_chat
model = MedusaModel.from_pretrained("medusa/demo_heads", base_model="/root/demo", dtype=torch.bfloat16).cuda().eval()
out = {"import_and_load_s": time.perf_counter() - t0}
import os
if os.environ.get("PRELOAD"):
    t = time.perf_counter(); import torch._inductor.compile_fx; out["preload_s"] = time.perf_counter() - t
tok = model.get_tokenizer()
for i, q in enumerate(load_questions(DEFAULT_QUESTIONS, 2)):
    prompt = render_chat(tok, [{"role": "user", "content": q["turns"][0]}]).cuda()
    torch.cuda.synchronize(); t = time.perf_counter()
    stream = model.medusa_generate(prompt, max_new_tokens=128)
    next(stream); torch.cuda.synchronize(); out[f"prompt{i}_first_token_s"] = time.perf_counter() - t
    steps = 1 + sum(1 for _ in stream); torch.cuda.synchronize(); out[f"prompt{i}_total_s"] = time.perf_counter() - t
    out[f"prompt{i}_steps"] = steps
print(json.dumps(out))
