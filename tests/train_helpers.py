"""Training-test fixtures: a tiny base model whose greedy replies survive decode -> encode, and its own answers."""

import pytest
import torch

from data_generation.generate import main as generate
from medusa.model import MedusaModel
from medusa.train.data import PadCollator, chat_renderer, load_conversations, tokenize_conversation
from medusa.train.losses import medusa_head_losses
from tests.tiny import tiny_model, tiny_tokenizer

HEADS = 3
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


@pytest.fixture(scope="module")
def single_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny matrices: threads only contend with each other
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def distilled(tmp_path_factory, single_thread):
    """A tiny base model and its own answers to 112 prompts (96 train, 16 held out)."""
    root = tmp_path_factory.mktemp("medusa1")
    base = save_tiny_base(root / "base")
    write_prompts(root / "prompts.jsonl", 112, multi_turn_every=8)
    assert generate(["--input", str(root / "prompts.jsonl"), "--output", str(root / "all.jsonl"), "--model", base,
                     "--max-new-tokens", "32", "--batch-size", "56"]) == 0
    lines = (root / "all.jsonl").read_text().splitlines()
    (root / "train.jsonl").write_text("\n".join(lines[:96]) + "\n")
    (root / "eval.jsonl").write_text("\n".join(lines[96:]) + "\n")
    return root, base


def held_out_metrics(model: MedusaModel, root) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-head CE ``[heads]`` and top-1 accuracy ``[heads]`` on the held-out conversations."""
    tok = model.get_tokenizer()
    features = [tokenize_conversation(tok, chat_renderer(tok), c, 256)
                for c in load_conversations(str(root / "eval.jsonl"))]
    batch = PadCollator(tok.pad_token_id)(features)
    with torch.no_grad():
        logits = model(batch["input_ids"], attention_mask=batch["attention_mask"])
    losses, stats = medusa_head_losses(logits, batch["labels"])
    return losses, stats[:, 1] / stats[:, 0]
