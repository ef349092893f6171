"""Random-weight Llama MedusaModels of known shapes: step timings need the shapes, not trained weights."""

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from ..model import MedusaConfig, MedusaModel

SHAPES = {
    "135m": dict(hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
                 num_key_value_heads=3, vocab_size=49152, tie_word_embeddings=True),
    "7b": dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
               num_key_value_heads=32, vocab_size=32000),
    "tiny": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, vocab_size=320),  # CPU smoke tests
}


def random_medusa(shape: str, num_heads: int, dtype: torch.dtype, device: str = "cuda") -> MedusaModel:
    """A Llama of ``SHAPES[shape]`` (seeded random weights, no EOS) with ``num_heads`` random heads."""
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
