"""Per-step cost of the decode loop on a GPU: eager vs CUDA graph, greedy vs Medusa, random weights.

Checks first that the graph-captured loop gives the same tokens as the eager loop and as Hugging Face
``generate``; then times one greedy step (root-only tree) and one Medusa step (a 64-token tree) and
reports the per-step overhead c = medusa_step / greedy_step - 1 (DESIGN.md §6).

    python benchmarks/step_overhead.py --shape 7b --output step_overhead.json
"""

import argparse
import json
import time

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from medusa.model import MedusaConfig, MedusaModel

SHAPES = {
    "135m": dict(hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
                 num_key_value_heads=3, vocab_size=49152, tie_word_embeddings=True),
    "7b": dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
               num_key_value_heads=32, vocab_size=32000),
    "tiny": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, vocab_size=320),  # CPU smoke tests
}


def random_medusa(shape: str, num_heads: int, dtype: torch.dtype, device: str = "cuda") -> MedusaModel:
    config = LlamaConfig(**SHAPES[shape], max_position_embeddings=4096, eos_token_id=None, bos_token_id=None)
    torch.manual_seed(0)
    with torch.device(device):
        default = torch.get_default_dtype()
        torch.set_default_dtype(dtype)
        base = LlamaForCausalLM(config).eval()
        torch.set_default_dtype(default)
    model = MedusaModel(base, MedusaConfig(medusa_num_heads=num_heads))
    with torch.no_grad():
        for p in model.medusa_head.parameters():
            p.normal_(0, 0.02)
    return model


def run(model, prompt, tree, new_tokens, cuda_graph):
    """(tokens, steps, seconds) of one generation, timed with device synchronisation."""
    torch.cuda.synchronize()
    start = time.perf_counter()
    tokens, steps = [], 0
    for out in model.medusa_generate(prompt, max_new_tokens=new_tokens, medusa_choices=tree, cuda_graph=cuda_graph,
                                     eos_token_id=[]):
        tokens += out["new_token_ids"]
        steps += 1
    torch.cuda.synchronize()
    return tokens, steps, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shape", choices=sorted(SHAPES), default="7b")
    parser.add_argument("--tree", default="mc_sim_7b_63")
    parser.add_argument("--prompt-len", type=int, default=128)
    parser.add_argument("--new-tokens", type=int, default=256)
    parser.add_argument("--output")
    args = parser.parse_args()
    model = random_medusa(args.shape, 5, torch.bfloat16)
    prompt = torch.randint(0, model.config.vocab_size, (1, args.prompt_len), generator=torch.Generator().manual_seed(1))
    result = {"shape": args.shape, "gpu": torch.cuda.get_device_name(), "torch": torch.__version__,
              "prompt_len": args.prompt_len, "new_tokens": args.new_tokens, "tree": args.tree}

    reference = model.base_model.generate(prompt.cuda(), max_new_tokens=32, do_sample=False,
                                          attention_mask=torch.ones_like(prompt).cuda())[0, args.prompt_len:].tolist()
    checks = {}
    for tree in ("none", args.tree):
        eager, _, _ = run(model, prompt, tree, 32, False)
        graph, _, _ = run(model, prompt, tree, 32, True)
        checks[tree] = {"eager_equals_hf": eager == reference, "graph_equals_eager": graph == eager}
    result["identical_first_32_tokens"] = checks

    for tree, name in (("none", "greedy"), (args.tree, "medusa")):
        for graph in (False, True):
            run(model, prompt, tree, 16, graph)  # warm-up (and graph capture)
            tokens, steps, seconds = run(model, prompt, tree, args.new_tokens, graph)
            result[f"{name}_{'graph' if graph else 'eager'}_ms_per_step"] = 1000 * seconds / steps
            result[f"{name}_{'graph' if graph else 'eager'}_tokens_per_step"] = len(tokens) / steps
    result["overhead_c_graph"] = result["medusa_graph_ms_per_step"] / result["greedy_graph_ms_per_step"] - 1
    result["overhead_c_eager"] = result["medusa_eager_ms_per_step"] / result["greedy_eager_ms_per_step"] - 1
    result["peak_memory_gib"] = torch.cuda.max_memory_allocated() / 2**30
    print(json.dumps(result, indent=1))
    if args.output:
        with open(args.output, "w") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
