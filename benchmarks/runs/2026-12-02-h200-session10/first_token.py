"""Where a second launch's first compiled token goes: imports, then the first greedy generation with compiled layers."""
import json, sys, time
t0 = time.perf_counter()
import torch
from medusa.model import MedusaModel
from medusa.eval.questions import DEFAULT_QUESTIONS, load_questions, render_chat
out = {"import_s": time.perf_counter() - t0}
model = MedusaModel.from_pretrained("medusa/demo_heads", base_model="/root/demo", dtype=torch.bfloat16).cuda().eval()
out["load_s"] = time.perf_counter() - t0
t = time.perf_counter(); import torch._inductor.compile_fx, triton; out["import_inductor_s"] = time.perf_counter() - t
q = load_questions(DEFAULT_QUESTIONS, 1)[0]
prompt = render_chat(model.get_tokenizer(), [{"role": "user", "content": q["turns"][0]}]).cuda()
for tree in ("none", None):
    torch.cuda.synchronize(); t = time.perf_counter()
    stream = model.medusa_generate(prompt, max_new_tokens=64, medusa_choices=tree, compile_step=sys.argv[1] if sys.argv[1] != "off" else False)
    next(stream); torch.cuda.synchronize(); out[f"{tree}_first_token_s"] = time.perf_counter() - t
    list(stream)
print(json.dumps(out))
