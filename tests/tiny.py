"""Tiny randomly initialised models and a tiny ChatML tokenizer for fast CPU tests."""

import torch
from tokenizers import ByteLevelBPETokenizer
from transformers import (
    LlamaConfig,
    LlamaForCausalLM,
    MistralConfig,
    MistralForCausalLM,
    PreTrainedTokenizerFast,
    Qwen2Config,
    Qwen2ForCausalLM,
)

CHATML_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]  # ids 0, 1, 2
_CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "Medusa heads propose several future tokens at once and the base model verifies them.",
    "user assistant system Hello! How are you today? I am fine, thank you.",
    "def add(a, b):\n    return a + b\n",
    "Tree attention verifies all candidate continuations in one forward pass.",
] * 20

ARCHS = {
    "llama": (LlamaConfig, LlamaForCausalLM, {}),
    "mistral": (MistralConfig, MistralForCausalLM, {"sliding_window": 12}),
    "qwen2": (Qwen2Config, Qwen2ForCausalLM, {"use_sliding_window": False}),
}


def tiny_tokenizer(vocab_size: int = 320) -> PreTrainedTokenizerFast:
    """Byte-level BPE with ChatML special tokens and chat template; ``len(tok) == vocab_size``."""
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(_CORPUS, vocab_size=vocab_size, min_frequency=1, special_tokens=SPECIAL_TOKENS)
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token=None, eos_token="<|im_end|>",
                                  pad_token="<|endoftext|>", unk_token=None)
    tok.chat_template = CHATML_TEMPLATE
    return tok


def tiny_model(arch: str = "llama", vocab_size: int = 320, seed: int = 0, hidden_size: int = 64,
               num_layers: int = 2, **overrides):
    """A randomly initialised causal LM in fp32, eval mode, eos id 2 (``<|im_end|>``)."""
    config_cls, model_cls, defaults = ARCHS[arch]
    kwargs = dict(vocab_size=vocab_size, hidden_size=hidden_size, intermediate_size=2 * hidden_size,
                  num_hidden_layers=num_layers, num_attention_heads=4, num_key_value_heads=2,
                  max_position_embeddings=1024, bos_token_id=1, eos_token_id=2, pad_token_id=0,
                  tie_word_embeddings=False)
    kwargs.update(defaults)
    kwargs.update(overrides)
    torch.manual_seed(seed)
    model = model_cls(config_cls(**kwargs)).eval()
    # Random init at std 0.02 gives near-uniform logits and argmax ties; widen the spread.
    with torch.no_grad():
        model.get_output_embeddings().weight.mul_(20)
    return model
