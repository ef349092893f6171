"""Smallest end-to-end run: Medusa heads on a tiny random Llama, checked against plain greedy decoding.

Runs offline on CPU in seconds. With real models use ``MedusaModel.from_pretrained(heads_dir)``.
"""

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from medusa.model import MedusaConfig, MedusaModel


def main() -> None:
    torch.manual_seed(0)
    base = LlamaForCausalLM(LlamaConfig(vocab_size=512, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                                        num_attention_heads=4, num_key_value_heads=2, eos_token_id=None)).eval()
    model = MedusaModel(base, MedusaConfig(medusa_num_heads=4))
    prompt = torch.randint(0, 512, (1, 16))

    steps, tokens = 0, []
    for out in model.medusa_generate(prompt, max_new_tokens=48):
        steps += 1
        tokens += out["new_token_ids"]
    greedy = base.generate(prompt, max_new_tokens=48, do_sample=False, attention_mask=torch.ones_like(prompt))
    same = tokens == greedy[0, prompt.shape[1]:].tolist()
    print(f"{len(tokens)} tokens in {steps} Medusa steps ({len(tokens) / steps:.2f} tokens/step); "
          f"identical to greedy decoding: {same}")
    if not same:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
