"""Probe: can torch.compile warm the compiled step in a background thread while the CUDA-graph step serves?"""
import json, sys, threading, time, traceback
import torch
from medusa.eval.answers import drain
from medusa.eval.questions import DEFAULT_QUESTIONS, load_questions, render_chat
from medusa.model import MedusaModel

out = sys.argv[1]
res = {"torch": torch.__version__, "switchinterval": sys.getswitchinterval()}
model = MedusaModel.from_pretrained("medusa/demo_heads", base_model="/root/demo", dtype=torch.bfloat16).cuda().eval()
tok = model.get_tokenizer()
qs = load_questions(DEFAULT_QUESTIONS, 8)
prompts = [render_chat(tok, [{"role": "user", "content": q["turns"][0]}]).cuda() for q in qs]

def gen(prompt, n=128, **kw):
    torch.cuda.synchronize(); t = time.perf_counter()
    stream = model.medusa_generate(prompt, max_new_tokens=n, eos_token_id=[], **kw)
    next(stream); torch.cuda.synchronize(); first = time.perf_counter() - t
    steps = 1 + sum(1 for _ in stream); torch.cuda.synchronize(); total = time.perf_counter() - t
    return {"first_s": round(first, 4), "total_s": round(total, 4), "steps": steps,
            "ms_per_step": round(1000 * (total - first) / max(steps - 1, 1), 3)}

# baseline: graph steps, all prompts twice (captures first)
for p in prompts: gen(p)
res["baseline"] = [gen(p) for p in prompts]
state = {"done": False, "error": None}
def background():
    try:
        t = time.perf_counter()
        side = torch.cuda.Stream()
        with torch.cuda.stream(side):
            drain(model.medusa_generate(prompts[0], max_new_tokens=8, eos_token_id=[], compile_step=True, cuda_graph=False))
            side.synchronize()
        state["compile_s"] = time.perf_counter() - t
    except Exception as e:
        state["error"] = traceback.format_exc()
    state["done"] = True
th = threading.Thread(target=background, daemon=True)
t0 = time.perf_counter()
th.start()
during = []
while not state["done"] and time.perf_counter() - t0 < 300:
    for p in prompts:
        try:
            r = gen(p); r["t"] = round(time.perf_counter() - t0, 2); during.append(r)
        except Exception as e:
            during.append({"error": traceback.format_exc()[-2000:]}); break
        if state["done"]:
            break
th.join(timeout=1)
res["during"] = during
res["background"] = {k: v for k, v in state.items()}
# after: compiled graph step on main's cache (should reuse the background's compiled code)
try:
    res["compiled_after_first"] = gen(prompts[0], compile_step=True)
    res["compiled_after_again"] = gen(prompts[0], compile_step=True)
    res["compiled_other_prompts"] = [gen(p, compile_step=True) for p in prompts[1:4]]
except Exception:
    res["compiled_after_error"] = traceback.format_exc()[-3000:]
json.dump(res, open(out, "w"), indent=1)
print(json.dumps(res, indent=1)[:6000])
