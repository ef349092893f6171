"""Batched decoding on a GPU: graph-replayed and eager batches equal each prompt decoded alone.

A random-weight 135M-shaped Llama with random heads, in fp32 (so kernel choice cannot flip an argmax),
prompts of different lengths, and an "EOS" that some rows emit early so that finished rows leave the
batch (power-of-two batches, one CUDA graph each). Skipped without CUDA.
"""

import pytest
import torch

from medusa.eval.random_model import random_medusa

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


@pytest.fixture(scope="module")
def model():
    return random_medusa("135m", 4, torch.float32, "cuda")


def common_early_token(outputs: list[list[int]]) -> int:
    """A token among the first 30 of some rows but not all: as EOS, it ends some rows early."""
    counts = {}
    for out in outputs:
        for token in set(out[:30]):
            counts[token] = counts.get(token, 0) + 1
    return max((t for t, c in counts.items() if c < len(outputs)), key=lambda t: counts[t])


@pytest.mark.parametrize("tree", ["none", "mc_sim_7b_63"])
@pytest.mark.parametrize("cuda_graph", [False, True])
def test_batched_rows_equal_each_prompt_decoded_alone(model, tree, cuda_graph):
    gen = torch.Generator().manual_seed(0)
    lengths = torch.randint(5, 200, (11,), generator=gen).tolist()
    prompts = [torch.randint(0, model.config.vocab_size, (n,), generator=gen).cuda() for n in lengths]
    alone = [model.generate([p], max_new_tokens=48, medusa_choices=tree, eos_token_id=[], cuda_graph=False)[0]
             for p in prompts]
    eos = common_early_token(alone)
    expected = [out[: out.index(eos) + 1] if eos in out else out for out in alone]
    assert len({len(out) for out in expected}) > 1  # some rows finish early and leave the batch
    batched = model.generate(prompts, max_new_tokens=48, medusa_choices=tree, eos_token_id=eos, cuda_graph=cuda_graph)
    assert batched == expected
