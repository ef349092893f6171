"""The demo base model in tests: a recorded greedy answer, and fresh (untrained) heads on it."""

import contextlib

import torch
from transformers import AutoModelForCausalLM

from medusa.demo import DEMO_BASE_NAME
from medusa.model import MedusaConfig, MedusaModel

HAIKU_PROMPT = "Write a haiku about the sea."
# The first 16 greedy tokens of the converted SmolLM2-135M-Instruct (plain HF generate, fp32, default
# system prompt of its chat template), recorded once at conversion.
HAIKU_GREEDY_IDS = [504, 6147, 282, 260, 3426, 28, 253, 13879, 6122, 28, 198, 49, 9154, 303, 5082, 282]
HAIKU_GREEDY_TEXT = "The waves of the sea, a silent beauty,\nA gentle lapping of"
# A small tree keeps CPU steps cheap; two heads fit it.
SMALL_TREE = "[[0], [1], [0, 0]]"


def fresh_demo_heads(base_dir: str, out_dir: str, num_heads: int = 2) -> str:
    """Save fresh heads (identity ResBlocks, lm_head copies) for the demo base, naming it symbolically."""
    base = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float16)
    config = MedusaConfig(medusa_num_heads=num_heads, base_model_name_or_path=DEMO_BASE_NAME)
    MedusaModel(base, config).save_pretrained(out_dir)
    return out_dir


@contextlib.contextmanager
def one_thread():
    """Run torch single-threaded: the test machine's cores are shared, and oversubscribed threads spin."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
