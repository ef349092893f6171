"""Heads fitted to a model's own greedy continuation, so that acceptance is frequent in tests."""

import torch

from medusa.model import MedusaConfig, MedusaModel


def greedy_reference(base, input_ids: torch.Tensor, max_new_tokens: int, eos_token_id=None) -> list[int]:
    """Plain greedy decoding with Hugging Face ``generate`` (its own DynamicCache and masking)."""
    out = base.generate(input_ids, max_new_tokens=max_new_tokens, do_sample=False, eos_token_id=eos_token_id,
                        pad_token_id=0, attention_mask=torch.ones_like(input_ids))
    return out[0, input_ids.shape[1]:].tolist()


def fitted_medusa(base, prompts: list[torch.Tensor], num_heads: int, steps: int = 300, new_tokens: int = 48,
                  seed: int = 0, **config) -> MedusaModel:
    """A MedusaModel whose heads are trained on the base model's greedy continuations of ``prompts``."""
    torch.manual_seed(seed)
    model = MedusaModel(base, MedusaConfig(medusa_num_heads=num_heads, **config))
    sequences = [torch.cat([p[0], torch.tensor(greedy_reference(base, p, new_tokens))])[None] for p in prompts]
    return _fit_heads(model, sequences, steps)


def sampled_medusa(base, prompt: torch.Tensor, num_heads: int, temperature: float, top_k: int = 0,
                   top_p: float = 1.0, samples: int = 64, new_tokens: int = 12, steps: int = 150,
                   seed: int = 0) -> MedusaModel:
    """A MedusaModel whose heads are trained on ``samples`` sampled continuations of ``prompt`` ``[1, S]``.

    The heads then propose the tokens the base model tends to sample, so that lossless sampling
    accepts them often, but not always.
    """
    torch.manual_seed(seed)
    model = MedusaModel(base, MedusaConfig(medusa_num_heads=num_heads))
    batch = prompt.expand(samples, -1)
    sequences = base.generate(batch, attention_mask=torch.ones_like(batch), max_new_tokens=new_tokens,
                              min_new_tokens=new_tokens, do_sample=True, temperature=float(temperature), top_k=top_k,
                              top_p=top_p, pad_token_id=0, eos_token_id=None)
    return _fit_heads(model, [sequences], steps)


def _fit_heads(model: MedusaModel, sequences: list[torch.Tensor], steps: int) -> MedusaModel:
    """Train the heads with cross-entropy on token batches ``[n, S]`` (head k predicts the token k + 2 ahead)."""
    with torch.no_grad():
        hiddens = [model.hidden_states(s) for s in sequences]
    optimizer = torch.optim.Adam(model.medusa_head.parameters(), lr=3e-3)
    for _ in range(steps):
        loss = 0.0
        for seq, hidden in zip(sequences, hiddens):
            logits = model.head_logits(hidden)  # [heads, n, S, V]
            for k in range(model.config.medusa_num_heads):
                shift = k + 2
                loss = loss + torch.nn.functional.cross_entropy(logits[k, :, :-shift].flatten(0, 1),
                                                                seq[:, shift:].flatten())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.medusa_head.requires_grad_(False)
    return model
