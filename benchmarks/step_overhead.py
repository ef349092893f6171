"""Per-step cost of the decode loop on a GPU: eager vs CUDA graph, greedy vs Medusa, random weights.

Checks first that the graph-captured loop gives the same tokens as the eager loop and as Hugging Face
``generate``; then times one greedy step (root-only tree) and one Medusa step (a 64-token tree) and
reports the per-step overhead c = medusa_step / greedy_step - 1 (DESIGN.md §6).

    python -m benchmarks.step_overhead --shape 7b --output step_overhead.json
"""

import argparse
import json

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from benchmarks.timing import timed
from medusa.eval.answers import drain
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


def run(model, prompt, tree, new_tokens, cuda_graph, compile_step=False):
    """(tokens, steps, seconds) of one generation, timed with device synchronisation."""
    (tokens, steps), seconds = timed(lambda: drain(model.medusa_generate(
        prompt, max_new_tokens=new_tokens, medusa_choices=tree, cuda_graph=cuda_graph, eos_token_id=[],
        compile_step=compile_step)))
    return tokens, steps, seconds


def measure(shape: str = "7b", tree: str = "mc_sim_7b_63", prompt_len: int = 128, new_tokens: int = 256,
            device: str = "cuda", compile_step: bool = False) -> dict:
    """Step times of the greedy loop and of Medusa on a random-weight ``shape`` Llama with 5 random heads.

    On CUDA (bf16) eager and graph-replayed steps, else eager only (fp32). ``overhead_c`` is
    c = medusa_step / greedy_step - 1 of the graph steps where there are any. Checks first that the
    loops give the tokens of Hugging Face ``generate`` (``identical_first_32_tokens``). With
    ``compile_step`` every timed step runs through ``torch.compile`` (the checks stay uncompiled).
    """
    cuda = device.startswith("cuda")
    model = random_medusa(shape, 5, torch.bfloat16 if cuda else torch.float32, device)
    prompt = torch.randint(0, model.config.vocab_size, (1, prompt_len), generator=torch.Generator().manual_seed(1))
    prompt = prompt.to(device)
    result = {"shape": shape, "device": torch.cuda.get_device_name() if cuda else "cpu", "torch": torch.__version__,
              "prompt_len": prompt_len, "new_tokens": new_tokens, "tree": tree, "compile_step": compile_step}
    modes = (False, True) if cuda else (False,)
    reference = model.base_model.generate(prompt, max_new_tokens=32, do_sample=False,
                                          attention_mask=torch.ones_like(prompt))[0, prompt_len:].tolist()
    checks = {}
    for name in ("none", tree):
        eager, _, _ = run(model, prompt, name, 32, False)
        checks[name] = {"eager_equals_hf": eager == reference}
        if cuda:
            checks[name]["graph_equals_eager"] = run(model, prompt, name, 32, True)[0] == eager
    result["identical_first_32_tokens"] = checks

    for name, label in (("none", "greedy"), (tree, "medusa")):
        for graph in modes:
            run(model, prompt, name, new_tokens, graph, compile_step)  # warm-up: compilation, graph captures
            tokens, steps, seconds = run(model, prompt, name, new_tokens, graph, compile_step)
            result[f"{label}_{'graph' if graph else 'eager'}_ms_per_step"] = 1000 * seconds / steps
            result[f"{label}_{'graph' if graph else 'eager'}_tokens_per_step"] = len(tokens) / steps
    for graph in modes:
        kind = "graph" if graph else "eager"
        result[f"overhead_c_{kind}"] = result[f"medusa_{kind}_ms_per_step"] / result[f"greedy_{kind}_ms_per_step"] - 1
    result["overhead_c"] = result["overhead_c_graph" if cuda else "overhead_c_eager"]
    if cuda:
        result["peak_memory_gib"] = torch.cuda.max_memory_allocated() / 2**30
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shape", choices=sorted(SHAPES), default="7b")
    parser.add_argument("--tree", default="mc_sim_7b_63")
    parser.add_argument("--prompt-len", type=int, default=128)
    parser.add_argument("--new-tokens", type=int, default=256)
    parser.add_argument("--device", default="cuda", help="cuda (bf16, eager and graph) or cpu (fp32, eager: a smoke test)")
    parser.add_argument("--compile-step", action="store_true", help="time steps run through torch.compile")
    parser.add_argument("--output")
    args = parser.parse_args()
    result = measure(args.shape, args.tree, args.prompt_len, args.new_tokens, args.device, args.compile_step)
    print(json.dumps(result, indent=1))
    if args.output:
        with open(args.output, "w") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
