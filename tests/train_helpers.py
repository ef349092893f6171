"""A tiny base model on disk whose greedy replies survive decode -> encode, for the training tests."""

import torch

from tests.tiny import tiny_model, tiny_tokenizer

BYTE_VOCAB = 259  # 3 ChatML specials + 256 byte tokens, no merges: decode then encode gives the same ids


def save_tiny_base(path, arch: str = "llama", seed: int = 0) -> str:
    """A tiny random chat model + byte-level ChatML tokenizer, saved as a Hugging Face model directory.

    lm_head rows of everything but printable ASCII are zeroed, so greedy replies are plain text that
    re-tokenizes to the very tokens the model produced (self-distillation works token for token).
    """
    tok = tiny_tokenizer(BYTE_VOCAB)
    model = tiny_model(arch, vocab_size=BYTE_VOCAB, seed=seed)
    printable = torch.tensor([len(s := tok.decode([i])) == 1 and s.isascii() and s.isprintable()
                              for i in range(BYTE_VOCAB)])
    with torch.no_grad():
        model.get_output_embeddings().weight[~printable] = 0
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return str(path)


def write_prompts(path, n: int, seed: int = 0, multi_turn_every: int = 0) -> str:
    """``n`` prompts in our JSONL format: a few random words each; every ``multi_turn_every``-th has 2 turns."""
    import json
    import random

    words = "the quick brown fox jumps over lazy dog medusa heads tree attention tokens verify pass".split()
    rng = random.Random(seed)
    with open(path, "w") as f:
        for i in range(n):
            turns = [" ".join(rng.choices(words, k=rng.randint(2, 6)))]
            if multi_turn_every and i % multi_turn_every == 0:
                turns.append(" ".join(rng.choices(words, k=3)))
            f.write(json.dumps({"id": f"p-{i}", "turns": turns}) + "\n")
    return str(path)
