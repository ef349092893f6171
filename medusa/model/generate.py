"""The Medusa decode loop: prefill, then tree steps until EOS or the token limit (DESIGN.md §1)."""

from collections.abc import Iterator
from contextlib import ExitStack, nullcontext
from functools import cache, partial

import torch

from .attention import grouped_query_attention
from .candidates import COPY_CHAINS, COPY_DEPTH, copy_candidates, generate_candidates
from .cuda_graph import GraphedStep
from .kv_cache import MedusaKVCache
from .masks import model_attention_mask
from .posterior import evaluate_posterior_greedy, evaluate_posterior_lossless, evaluate_posterior_typical
from .sampling import choose_root, resolve_sampling
from .tree import TreeBuffers


def _forward(model, tokens: torch.Tensor, new_mask: torch.Tensor, positions: torch.Tensor, cache: MedusaKVCache,
             fold_gqa: bool = False):
    """Run ``tokens`` ``[batch, q]`` at ``positions`` ``[batch, q]`` into the cache; returns hidden states ``[batch, q, d]``.

    The caller checks the cache's capacity first: reading its host-side length here would make a
    compiled step recompile for every length.
    """
    mask = model_attention_mask(model.base_model.config, cache.length, new_mask, positions, cache.span,
                                model.lm_head.weight.dtype)
    with grouped_query_attention(model.base_model.config) if fold_gqa else nullcontext():
        return model.hidden_states(tokens, mask, positions, cache)


def _per_row(tensor: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``tensor[b, index[b]]`` for every row b: ``[batch, n, ...]``, ``[batch]`` -> ``[batch, ...]`` (no host sync)."""
    return tensor[torch.arange(tensor.shape[0], device=tensor.device), index]


def tree_step(model, buffers: TreeBuffers, cache: MedusaKVCache, root: torch.Tensor, head_logits: torch.Tensor,
              active: torch.Tensor, sampling: str = "greedy", temperature: float = 0.0, top_k: int = 0,
              top_p: float = 1.0, posterior_threshold: float = 0.09, posterior_alpha: float = 0.3,
              generator: torch.Generator | None = None, fold_gqa: bool = False):
    """One Medusa step for a batch: verify every row's tree in one forward, accept a path per row, compact the cache.

    Greedy and typical steps have static shapes and no host synchronisation, so they can be captured
    in a CUDA graph. Lossless sampling walks each row's tree on the host (one sync per visited node)
    and draws the next root from its residual; greedy and typical take it from the base logits after
    the last accepted token.

    Args:
        root: ``[batch]`` the token that follows each row's accepted sequence.
        head_logits: ``[batch, heads, V]`` the heads' logits at each row's last accepted position
            (ignored for a root-only tree, which makes this a plain decoding step).
        active: ``[batch]`` bool; a row that is not active keeps its cache length (finished rows
            waiting to be dropped from the batch).
        fold_gqa: attend with :func:`~medusa.model.attention.grouped_sdpa_attention`.

    Returns:
        tokens ``[batch, depth + 1]`` (each row's chosen path; its first ``accept_length + 1`` are
        new), accept_length ``[batch]``, the next roots ``[batch]`` and the head logits
        ``[batch, heads, V]`` at each row's last accepted token.
    """
    copies = None
    if buffers.copy_chains:
        copies = copy_candidates(cache.text(root), cache.length, buffers.copy_chains, buffers.copy_depth)
    tree_candidates, candidates = generate_candidates(root, head_logits, buffers, copies)
    hidden = _forward(model, tree_candidates, buffers.attn_mask, cache.length[:, None] + buffers.position_ids, cache,
                      fold_gqa)
    logits = model.lm_logits(hidden)  # [batch, T, V]
    if sampling == "lossless":
        rows = [evaluate_posterior_lossless(logits[b], tree_candidates[b], buffers, temperature, top_k, top_p, generator)
                for b in range(logits.shape[0])]
        path, accept_length, next_root = (torch.stack(column) for column in zip(*rows))
    else:
        if sampling == "greedy":
            predictions = logits.argmax(-1)[:, buffers.retrieve_indices]  # [batch, leaves, depth + 1]
            best, accept_length = evaluate_posterior_greedy(predictions, candidates, buffers.path_valid)
            next_root = _per_row(_per_row(predictions, best), accept_length)
        else:
            path_logits = logits[:, buffers.retrieve_indices]
            best, accept_length = evaluate_posterior_typical(path_logits, candidates, buffers.path_valid, temperature,
                                                             posterior_threshold, posterior_alpha, top_k, top_p)
            next_root = choose_root(_per_row(_per_row(path_logits, best), accept_length), temperature, top_k, top_p,
                                    generator)
        path = buffers.retrieve_indices[best]  # [batch, depth + 1]
    tokens = tree_candidates.gather(1, path)
    cache.accept(path, (accept_length + 1) * active, tokens)
    if buffers.head_depth:
        head_logits = model.head_logits(_per_row(hidden, _per_row(path, accept_length))).transpose(0, 1)
    return tokens, accept_length, next_root, head_logits


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


def _prompt_list(input_ids) -> tuple[list[torch.Tensor], bool]:
    """``[1, L]`` tensor -> one prompt (streaming dicts); ``[B, L]`` tensor or a list of sequences -> a batch."""
    if isinstance(input_ids, torch.Tensor):
        if input_ids.ndim != 2:
            raise ValueError(f"input_ids must be [batch, prompt_len] or a list of prompts; got shape {tuple(input_ids.shape)}.")
        prompts, single = list(input_ids), input_ids.shape[0] == 1
    else:
        prompts, single = [torch.as_tensor(p, dtype=torch.long) for p in input_ids], False
        if any(p.ndim != 1 for p in prompts):
            raise ValueError("A list of prompts must hold 1-D token id sequences.")
    if not prompts or any(p.numel() == 0 for p in prompts):
        raise ValueError("The prompt is empty.")
    return prompts, single


@torch.inference_mode()
def medusa_generate(model, input_ids, temperature: float = 0.0, max_steps: int = 512,
                    max_new_tokens: int | None = None, medusa_choices=None, posterior_threshold: float = 0.09,
                    posterior_alpha: float = 0.3, eos_token_id: int | list[int] | None = None,
                    generator: torch.Generator | None = None, sampling: str | None = None, top_k: int = 0,
                    top_p: float = 1.0, cuda_graph: bool | None = None, tree_policy=None,
                    batch_size: int | None = None, compile_step: bool = False, fold_gqa: bool = False,
                    copy_chains: int = COPY_CHAINS, copy_depth: int = COPY_DEPTH) -> Iterator:
    """Generate with Medusa heads, yielding after every step.

    Args:
        model: a :class:`~medusa.model.MedusaModel`.
        input_ids: ``[1, prompt_len]`` for one streamed prompt; ``[batch, prompt_len]`` or a list of
            1-D token id sequences (any lengths) for a batch, each row decoded as if alone.
        batch_size: most prompts decoded at once (default: all). With more prompts than that, a
            row that finishes takes the next waiting prompt (continuous batching), so the batch
            stays full until the queue is empty.
        temperature: 0 for greedy (output equals plain greedy decoding of the base model); above 0,
            sampling from the base distribution at this temperature, cut by ``top_k`` / ``top_p``.
        sampling: ``"greedy"`` (temperature 0), ``"lossless"`` (the default above temperature 0:
            output distributed exactly as sampling from the base model) or ``"typical"`` (typical
            acceptance with ``posterior_threshold`` (epsilon) and ``posterior_alpha``; lossy, accepts
            more). See docs/sampling.md.
        max_steps: most tree steps per prompt; max_new_tokens: most new tokens per prompt (default:
            what the steps and the context allow).
        medusa_choices: the tree at every batch size (preset name, JSON string, JSON file, list of
            paths, ``"none"`` for no speculation: the library's plain greedy loop). None: the tree
            policy's choice for the current batch size, else the default preset.
        tree_policy: a :class:`~medusa.model.tree_policy.TreePolicy` (default ``model.tree_policy``):
            the tree for each batch size from measured head accuracies and verify costs. Rows that
            finish are dropped from the batch, so the tree can grow as the batch shrinks.
        eos_token_id: stop token(s); default the base model's generation config.
        generator: random generator (on the model's device) for all sampling; seed it for
            reproducible output.
        cuda_graph: replay each greedy step from a CUDA graph (default: on for CUDA models at
            temperature 0).
        compile_step: run the step through ``torch.compile`` (fusing its many small kernels: norms,
            rotary embedding, masks) before any graph capture; greedy and typical sampling only.
            Each new tree, batch size or cache span (256 slots) compiles on first use (seconds to
            minutes); up to ``COMPILE_VARIANTS`` of them per process, then new ones run uncompiled.
        copy_chains, copy_depth: copy branches (prompt lookup) added to every tree that speculates:
            ``copy_chains`` chains of ``copy_depth`` tokens that followed the latest earlier occurrences
            of the text's last 1-3 tokens (in the prompt or the reply so far). 0 chains: heads only.
            With ``medusa_choices="none"`` and chains, only copied tokens are speculated.
        fold_gqa: for grouped-query models, attend without copying the cache per layer
            (:mod:`medusa.model.attention`): on an H200, batch-64 greedy steps of the demo shape 38 %
            faster, batch-1 Medusa steps ~2 % slower. Off by default: a tree policy's cost curve is
            measured with one setting and holds only for it.

    Yields:
        For one prompt, a dict with ``text`` (whole reply so far, special tokens skipped; None
        without a tokenizer), ``new_text``, ``new_token_ids`` (tokens this step added),
        ``accept_length`` (tokens accepted from the heads this step) and ``num_new_tokens``. For a
        batch, a list with one entry per prompt: such a dict (``text`` None) plus ``finished`` for
        the prompts decoded in this step, None for the others (waiting or finished). A prompt stops
        after EOS (tokens accepted after it are dropped) or at its token or step limit.
    """
    prompts, single = _prompt_list(input_ids)
    if batch_size is not None and batch_size < 1:
        raise ValueError(f"batch_size must be at least 1; got {batch_size}.")
    batch_size = min(batch_size or len(prompts), len(prompts))
    sampling = resolve_sampling(sampling, temperature, top_k, top_p)
    _check_copy_shape(copy_chains, copy_depth)
    trees = _tree_chooser(model, medusa_choices, tree_policy, copy_chains, copy_depth)
    used = [trees(n) for n in range(1, batch_size + 1)]  # every batch size the rows can shrink to
    tree_size, depth = max(b.num_nodes for b in used), max(b.depth for b in used)
    longest = max(p.shape[0] for p in prompts)
    budget = _token_budget(model, longest, tree_size, depth, max_steps, max_new_tokens)
    device = model.lm_head.weight.device
    if cuda_graph is None:
        cuda_graph = device.type == "cuda" and sampling == "greedy"
    if cuda_graph and (device.type != "cuda" or sampling != "greedy"):
        raise ValueError("cuda_graph=True needs a CUDA model and greedy decoding (temperature 0).")
    if compile_step and sampling == "lossless":
        raise ValueError("compile_step=True needs greedy or typical sampling (lossless sampling walks the tree on "
                         "the host).")
    step = _compiled_tree_step(COMPILE_BACKEND) if compile_step else tree_step
    decoder = _decode(model, trees, step, [p.to(device) for p in prompts], batch_size, longest + budget + tree_size,
                      budget, max_steps, _eos_ids(model, eos_token_id), cuda_graph, sampling=sampling, temperature=temperature,
                      top_k=top_k, top_p=top_p, posterior_threshold=posterior_threshold,
                      posterior_alpha=posterior_alpha, generator=generator, fold_gqa=fold_gqa)
    yield from (_single(model.tokenizer, decoder) if single else decoder)


COMPILE_BACKEND = "inductor"
COMPILE_VARIANTS = 64  # torch's default recompile limit (8) is two trees over four spans


@cache
def _compiled_tree_step(backend: str):
    """:func:`tree_step` through ``torch.compile``, made once per process (its compiled variants are shared).

    Static shapes: each tree, batch size and attention span gets its own compiled variant, as it gets
    its own CUDA graph. Left to infer dynamic shapes, inductor failed on the second span (torch 2.11
    and 2.13: "Expected !size_bytes_is_heap_allocated_").
    """
    compiled = torch.compile(tree_step, backend=backend, dynamic=False)

    def step(*args, **kwargs):
        with torch._dynamo.config.patch(recompile_limit=COMPILE_VARIANTS):
            return compiled(*args, **kwargs)

    return step


def _check_copy_shape(copy_chains, copy_depth) -> None:
    for name, value in (("copy_chains", copy_chains), ("copy_depth", copy_depth)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise ValueError(f"{name} must be a non-negative integer; got {value!r}.")
    if copy_chains and not copy_depth:
        raise ValueError("copy_depth must be at least 1 when copy_chains > 0.")


def _tree_chooser(model, medusa_choices, tree_policy, copy_chains: int, copy_depth: int):
    """``batch_size -> TreeBuffers``: the fixed tree, else the policy's, else the default preset; with the
    copy branches added to any of them but ``"none"`` given by a policy (no speculation at all)."""
    policy = tree_policy or model.tree_policy
    if medusa_choices is not None or policy is None:
        return lambda batch_size: model.tree_buffers(medusa_choices, copy_chains, copy_depth if copy_chains else 0)

    def chosen(batch_size):
        choices = policy.choices(batch_size)
        chains = 0 if choices == "none" else copy_chains
        return model.tree_buffers(choices, chains, copy_depth if chains else 0)

    return chosen


def _single(tokenizer, decoder: Iterator[list[dict]]) -> Iterator[dict]:
    """One prompt's stream with its text decoded incrementally."""
    generated: list[int] = []
    text = ""
    for (row,) in decoder:
        generated += row["new_token_ids"]
        new_text = None
        if tokenizer is not None:
            full = tokenizer.decode(generated, skip_special_tokens=True, clean_up_tokenization_spaces=False)
            new_text = full[len(text):] if full.startswith(text) else full
            text = full
        yield {"text": text if tokenizer is not None else None, "new_text": new_text,
               "new_token_ids": row["new_token_ids"], "accept_length": row["accept_length"],
               "num_new_tokens": row["num_new_tokens"]}


def _bucket(num_active: int) -> int:
    """Batch size to run ``num_active`` rows at: the next power of two, so few CUDA graphs are captured."""
    return 1 << (num_active - 1).bit_length()


def prefill(model, prompts: list[torch.Tensor], cache: MedusaKVCache, fold_gqa: bool = False) -> torch.Tensor:
    """Run the prompts (1-D, any lengths) into an empty cache of ``len(prompts)`` rows in one right-padded forward.

    Returns the hidden state at each prompt's last token, ``[batch, d]``; the cache then holds each
    row's prompt (``cache.length`` = the prompt lengths).
    """
    device = prompts[0].device
    prompt_lens = torch.tensor([p.shape[0] for p in prompts], device=device)
    padded = torch.nn.utils.rnn.pad_sequence(prompts, batch_first=True)  # [batch, longest]
    # Causal attention never lets a real token see the padding after it; the padding's own
    # entries are overwritten by the first step.
    causal = torch.ones(padded.shape[1], padded.shape[1], dtype=torch.bool, device=device).tril()
    positions = torch.arange(padded.shape[1], device=device).expand(len(prompts), -1)
    cache.check_capacity(padded.shape[1])
    cache.fit_span(padded.shape[1])
    hidden = _per_row(_forward(model, padded, causal, positions, cache, fold_gqa), prompt_lens - 1)  # [batch, d]
    cache.commit(prompt_lens, padded)
    return hidden


def _new_tokens(accepted: list[int], eos: set[int], room: int) -> tuple[list[int], bool]:
    """What a step adds to one prompt's output: its accepted tokens up to the first EOS and at most
    ``room`` of them; and whether the prompt stops there."""
    for j, token in enumerate(accepted):
        if token in eos:
            return accepted[: min(j + 1, room)], True
    return accepted[:room], len(accepted) >= room


def _decode(model, trees, step_fn, prompts: list[torch.Tensor], batch_size: int, capacity: int, budget: int,
            max_steps: int, eos: set[int], cuda_graph: bool, **decoding) -> Iterator[list[dict | None]]:
    """Prefill the first ``batch_size`` prompts in one right-padded forward, then batched steps; rows that
    finish take the next waiting prompts, and once none wait, leave the batch. See :func:`medusa_generate`."""
    device = prompts[0].device
    waiting = list(range(len(prompts)))[::-1]  # prompt indices, next one last
    outputs: list[list[int]] = [[] for _ in prompts]
    steps = [0] * len(prompts)
    lengths = [p.shape[0] for p in prompts]  # each prompt's committed cache length

    def start(cache: MedusaKVCache):
        """Prefill the next ``cache.batch_size`` waiting prompts into ``cache``: (their indices, roots, head logits)."""
        new = [waiting.pop() for _ in range(cache.batch_size)]
        hidden = prefill(model, [prompts[i] for i in new], cache, decoding["fold_gqa"])
        root = choose_root(model.lm_logits(hidden), decoding["temperature"], decoding["top_k"], decoding["top_p"],
                           decoding["generator"])
        return new, root, model.head_logits(hidden).transpose(0, 1)

    with ExitStack() as stack:
        cache, graphs = stack.enter_context(model.decode_cache(capacity, batch_size))
        rows, root, head_logits = start(cache)  # rows[r]: the prompt in cache row r (None once finished)
        active = torch.ones(batch_size, dtype=torch.bool, device=device)
        while True:
            buffers = trees(cache.batch_size)
            step = partial(step_fn, model, buffers, cache, **decoding)
            cache.check_capacity(buffers.num_nodes)
            span = cache.fit_span(buffers.num_nodes)
            if cuda_graph:  # one graph per step function, tree, span and attention: a few per generation
                key = (step_fn, buffers.key, span, decoding["fold_gqa"])
                if key not in graphs:
                    graphs[key] = GraphedStep(step, (root, head_logits, active), cache)
                step = graphs[key]
            tokens, accept_length, root, head_logits = step(root, head_logits, active)
            host = torch.cat([accept_length[:, None], tokens], dim=1).tolist()  # the step's one host sync

            report: list[dict | None] = [None] * len(prompts)
            done = []  # cache rows whose prompt finished this step
            for r, (accepted, *path) in enumerate(host):
                i = rows[r]
                if i is None:
                    continue
                lengths[i] += accepted + 1
                steps[i] += 1
                new_ids, stopped = _new_tokens(path[: accepted + 1], eos, budget - len(outputs[i]))
                finished = stopped or steps[i] >= max_steps
                outputs[i] += new_ids
                report[i] = {"new_token_ids": new_ids, "accept_length": accepted, "num_new_tokens": len(outputs[i]),
                             "finished": finished}
                if finished:
                    done.append(r)
            yield report
            if done:
                for r in done:
                    rows[r] = None
                free = [r for r, i in enumerate(rows) if i is None][: len(waiting)]
                # Refill once an eighth of the batch is free: a prefill is an eager forward (~18 ms on
                # a GPU, DESIGN.md section 6), worth several steps, so one per finished row would cost
                # more than the idle rows.
                if free and len(free) >= min(max(1, batch_size // 8), len(waiting)):
                    # prefill waiting prompts apart, then copy them into the free rows
                    longest = max(prompts[i].shape[0] for i in waiting[-len(free):])
                    fresh = MedusaKVCache.for_model(model.base_model, longest, len(free))
                    new, fresh_root, fresh_heads = start(fresh)
                    index = torch.tensor(free, device=device)
                    fresh.copy_rows_to(cache, torch.arange(len(free), device=device), index)
                    root = root.index_copy(0, index, fresh_root)
                    head_logits = head_logits.index_copy(0, index, fresh_heads)
                    for r, i in zip(free, new):
                        rows[r] = i
                live = [r for r, i in enumerate(rows) if i is not None]
                if not live:
                    return
                keep = live + [r for r, i in enumerate(rows) if i is None][: _bucket(len(live)) - len(live)]
                if len(keep) < cache.batch_size and not waiting:  # drop finished rows into a smaller cache
                    index = torch.tensor(keep, device=device)
                    smaller, graphs = stack.enter_context(model.decode_cache(capacity, len(keep)))
                    cache.copy_rows_to(smaller, index)
                    cache, root, head_logits = smaller, root[index], head_logits[index]
                    rows = [rows[r] for r in keep]
                active = torch.tensor([i is not None for i in rows], device=device)
            cache.host_length = max(lengths[i] for i in rows if i is not None)
