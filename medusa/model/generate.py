"""The Medusa decode loop: prefill, then tree steps until EOS or the token limit (DESIGN.md §1)."""

from collections.abc import Iterator
from functools import partial

import torch

from .candidates import generate_candidates
from .cuda_graph import GraphedStep
from .kv_cache import MedusaKVCache
from .masks import model_attention_mask
from .posterior import evaluate_posterior_greedy, evaluate_posterior_lossless, evaluate_posterior_typical
from .sampling import choose_root, resolve_sampling
from .tree import TreeBuffers


def _forward(model, tokens: torch.Tensor, new_mask: torch.Tensor, positions: torch.Tensor, cache: MedusaKVCache):
    """Run ``tokens`` ``[q]`` at ``positions`` ``[q]`` into the cache; returns hidden states ``[q, d]``."""
    cache.check_capacity(tokens.shape[0])
    mask = model_attention_mask(model.base_model.config, cache.length, new_mask, positions, cache.capacity,
                                model.lm_head.weight.dtype)
    return model.hidden_states(tokens[None], mask, positions[None], cache)[0]


def _at(tensor: torch.Tensor, index: torch.Tensor | int) -> torch.Tensor:
    """``tensor[index]`` for a 0-d device index without reading it on the host (plain indexing would sync)."""
    return tensor.index_select(0, torch.as_tensor(index, device=tensor.device).reshape(1))[0]


def tree_step(model, buffers: TreeBuffers, cache: MedusaKVCache, root: torch.Tensor, head_logits: torch.Tensor,
              sampling: str = "greedy", temperature: float = 0.0, top_k: int = 0, top_p: float = 1.0,
              posterior_threshold: float = 0.09, posterior_alpha: float = 0.3, generator: torch.Generator | None = None):
    """One Medusa step: verify the tree in one forward, accept a path, compact the cache.

    Greedy steps have static shapes and no host synchronisation, so they can be captured in a CUDA
    graph. Lossless sampling walks the tree on the host (one sync per visited node) and draws the
    next root from its residual; greedy and typical take it from the base logits after the last
    accepted token.

    Args:
        root: ``[1]`` the token that follows the accepted sequence.
        head_logits: ``[heads, V]`` the heads' logits at the last accepted position (ignored for a
            root-only tree, which makes this a plain decoding step).

    Returns:
        tokens ``[depth + 1]`` (the chosen path; its first ``accept_length + 1`` are new),
        accept_length (0-d), the next root ``[1]`` and the head logits ``[heads, V]`` at the last
        accepted token.
    """
    tree_candidates, candidates = generate_candidates(root, head_logits, buffers)
    hidden = _forward(model, tree_candidates, buffers.attn_mask, cache.length + buffers.position_ids, cache)
    logits = model.lm_logits(hidden)
    if sampling == "lossless":
        best, accept_length, next_root = evaluate_posterior_lossless(logits, tree_candidates, buffers, temperature,
                                                                     top_k, top_p, generator)
    else:
        path_logits = logits[buffers.retrieve_indices]
        if sampling == "greedy":
            best, accept_length = evaluate_posterior_greedy(path_logits, candidates, buffers.path_valid)
        else:
            best, accept_length = evaluate_posterior_typical(path_logits, candidates, buffers.path_valid, temperature,
                                                             posterior_threshold, posterior_alpha, top_k, top_p)
        next_root = choose_root(_at(_at(path_logits, best), accept_length), temperature, top_k, top_p, generator)
    path = _at(buffers.retrieve_indices, best)
    cache.accept(path, accept_length + 1)
    next_head_logits = model.head_logits(_at(hidden, _at(path, accept_length))) if buffers.depth else head_logits
    return _at(candidates, best), accept_length, next_root, next_head_logits


def _eos_ids(model, eos_token_id) -> set[int]:
    if eos_token_id is None:
        eos_token_id = model.base_model.generation_config.eos_token_id
        if eos_token_id is None and model.tokenizer is not None:
            eos_token_id = model.tokenizer.eos_token_id
    if eos_token_id is None:
        return set()
    return {eos_token_id} if isinstance(eos_token_id, int) else set(eos_token_id)


def _token_budget(model, prompt_len: int, tree_size: int, depth: int, max_steps: int, max_new_tokens: int | None) -> int:
    """New tokens to allow, so that prompt + new tokens + one tree fit in the model's context."""
    context = getattr(model.base_model.config.get_text_config(), "max_position_embeddings", None) or 2**31
    room = context - prompt_len - tree_size
    if max_new_tokens is None:
        max_new_tokens = max_steps * (depth + 1)
        if room <= 0:
            raise ValueError(
                f"The prompt has {prompt_len} tokens; with a tree of {tree_size} tokens it does not fit in the "
                f"model's context of {context} tokens."
            )
        return min(max_new_tokens, room)
    if max_new_tokens > room:
        raise ValueError(
            f"prompt ({prompt_len} tokens) + max_new_tokens ({max_new_tokens}) + tree ({tree_size}) exceeds the "
            f"model's context of {context} tokens."
        )
    return max_new_tokens


@torch.inference_mode()
def medusa_generate(model, input_ids: torch.Tensor, temperature: float = 0.0, max_steps: int = 512,
                    max_new_tokens: int | None = None, medusa_choices=None, posterior_threshold: float = 0.09,
                    posterior_alpha: float = 0.3, eos_token_id: int | list[int] | None = None,
                    generator: torch.Generator | None = None, sampling: str | None = None, top_k: int = 0,
                    top_p: float = 1.0, cuda_graph: bool | None = None) -> Iterator[dict]:
    """Generate with Medusa heads, yielding after every step.

    Args:
        model: a :class:`~medusa.model.MedusaModel`.
        input_ids: ``[1, prompt_len]`` (batch size 1).
        temperature: 0 for greedy (output equals plain greedy decoding of the base model); above 0,
            sampling from the base distribution at this temperature, cut by ``top_k`` / ``top_p``.
        sampling: ``"greedy"`` (temperature 0), ``"lossless"`` (the default above temperature 0:
            output distributed exactly as sampling from the base model) or ``"typical"`` (typical
            acceptance with ``posterior_threshold`` (epsilon) and ``posterior_alpha``; lossy, accepts
            more). See docs/sampling.md.
        max_steps: most tree steps; max_new_tokens: most new tokens (default: what the steps and
            the context allow).
        medusa_choices: the tree (preset name, JSON string, JSON file, list of paths, None for the
            default preset, or ``"none"`` for no speculation: the library's plain greedy loop).
        eos_token_id: stop token(s); default the base model's generation config.
        generator: random generator (on the model's device) for all sampling; seed it for
            reproducible output.
        cuda_graph: replay each greedy step from a CUDA graph (default: on for CUDA models at
            temperature 0).

    Yields:
        dict with ``text`` (whole reply so far, special tokens skipped; None without a tokenizer),
        ``new_text``, ``new_token_ids`` (tokens this step added), ``accept_length`` (tokens
        accepted from the heads this step) and ``num_new_tokens``. Generation stops after EOS
        (tokens accepted after it are dropped) or at the token limit.
    """
    if input_ids.ndim != 2 or input_ids.shape[0] != 1:
        raise ValueError(f"medusa_generate takes input_ids of shape [1, prompt_len] (batch size 1); got {tuple(input_ids.shape)}.")
    if input_ids.shape[1] == 0:
        raise ValueError("The prompt is empty.")
    sampling = resolve_sampling(sampling, temperature, top_k, top_p)
    buffers = model.tree_buffers(medusa_choices)
    prompt_len = input_ids.shape[1]
    budget = _token_budget(model, prompt_len, buffers.num_nodes, buffers.depth, max_steps, max_new_tokens)
    device = model.lm_head.weight.device
    if cuda_graph is None:
        cuda_graph = device.type == "cuda" and sampling == "greedy"
    if cuda_graph and (device.type != "cuda" or sampling != "greedy"):
        raise ValueError("cuda_graph=True needs a CUDA model and greedy decoding (temperature 0).")
    eos = _eos_ids(model, eos_token_id)

    with model.decode_cache(prompt_len + budget + buffers.num_nodes) as (cache, graphs):
        yield from _decode(model, buffers, cache, graphs, input_ids[0].to(device), budget, max_steps, eos, cuda_graph,
                           sampling=sampling, temperature=temperature, top_k=top_k, top_p=top_p,
                           posterior_threshold=posterior_threshold, posterior_alpha=posterior_alpha, generator=generator)


def _decode(model, buffers: TreeBuffers, cache: MedusaKVCache, graphs: dict, prompt: torch.Tensor, budget: int,
            max_steps: int, eos: set[int], cuda_graph: bool, **decoding) -> Iterator[dict]:
    """Prefill, then steps; see :func:`medusa_generate` for what is yielded."""
    device, prompt_len = prompt.device, prompt.shape[0]
    causal = torch.ones(prompt_len, prompt_len, dtype=torch.bool, device=device).tril()
    hidden = _forward(model, prompt, causal, torch.arange(prompt_len, device=device), cache)[-1]
    cache.commit(prompt_len)
    root = choose_root(model.lm_logits(hidden), decoding["temperature"], decoding["top_k"], decoding["top_p"],
                       decoding["generator"])
    head_logits = model.head_logits(hidden)

    step = partial(tree_step, model, buffers, cache, **decoding)
    if cuda_graph:
        if buffers.key not in graphs:
            graphs[buffers.key] = GraphedStep(step, (root, head_logits), cache)
        step = graphs[buffers.key]

    tokenizer = model.tokenizer
    generated: list[int] = []
    text = ""
    for _ in range(max_steps):
        cache.check_capacity(buffers.num_nodes)
        tokens, accept_length, root, head_logits = step(root, head_logits)
        accept_length, *tokens = torch.cat([accept_length.reshape(1), tokens]).tolist()  # the step's one host sync
        cache.host_length += accept_length + 1

        new_ids = tokens[: accept_length + 1]
        stop = False
        for i, token in enumerate(new_ids):
            if token in eos:
                new_ids, stop = new_ids[: i + 1], True
                break
        if len(generated) + len(new_ids) >= budget:
            new_ids, stop = new_ids[: budget - len(generated)], True
        generated += new_ids
        new_text = None
        if tokenizer is not None:
            full = tokenizer.decode(generated, skip_special_tokens=True, clean_up_tokenization_spaces=False)
            new_text = full[len(text) :] if full.startswith(text) else full
            text = full
        yield {
            "text": text if tokenizer is not None else None,
            "new_text": new_text,
            "new_token_ids": new_ids,
            "accept_length": accept_length,
            "num_new_tokens": len(generated),
        }
        if stop:
            return
