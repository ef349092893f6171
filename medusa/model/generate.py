"""The Medusa decode loop: prefill, then tree steps until EOS or the token limit (docs/design.md, "The decode step")."""

from collections.abc import Callable, Iterator
import time
from contextlib import ExitStack, nullcontext
from dataclasses import dataclass, replace
from functools import lru_cache, partial
from typing import Protocol

import torch
from torch import nn
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from .adaptive import AcceptanceFollower, LevelHistory, draft_levels
from .attention import grouped_query_attention
from .cache_pool import CachePool
from .candidates import COPY_CHAINS, COPY_DEPTH, copy_candidates, generate_candidates
from .compile_warmup import scratch_run
from .compiled_layers import compilable, compiled_layers, give_up
from .cuda_graph import GraphedStep
from .decoding import DecodingConfig
from .eos import eos_token_ids
from .kv_cache import MedusaKVCache
from .masks import model_attention_mask
from .posterior import (POSTERIOR_ALPHA, POSTERIOR_THRESHOLD, evaluate_posterior_greedy, evaluate_posterior_lossless,
                        evaluate_posterior_typical)
from .sampling import choose_root
from .scheduler import RowScheduler
from .tree import TreeBuffers
from .tree_policy import TreePolicy


class Network(Protocol):
    """The forward passes a decode step runs (a :class:`~medusa.model.MedusaModel` is one)."""

    @property
    def base_model(self) -> PreTrainedModel: ...

    @property
    def lm_head(self) -> nn.Module: ...

    def hidden_states(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, position_ids: torch.Tensor,
                      cache: MedusaKVCache) -> torch.Tensor: ...

    def lm_logits(self, hidden: torch.Tensor) -> torch.Tensor: ...

    def head_logits(self, hidden: torch.Tensor) -> torch.Tensor: ...


@dataclass(frozen=True)
class DecodeSetup:
    """What the decode loop uses of a model besides its forward passes; the model hands one to each generation.

    Args:
        network: the forward passes.
        tree_buffers: ``(medusa_choices, copy_chains, copy_depth) -> TreeBuffers`` (None choices: the
            model's default tree; ``"none"``: no head nodes).
        tree_policy: the tree for each batch size where generation names none (None: the default tree).
        pool: decode caches and CUDA graphs kept between generations.
        level_history: step times measured on this device and tokens per step rows got, for trees that follow
            acceptance.
        tokenizer: decodes a single prompt's stream (None: no text) and names its EOS when the base
            model's generation config does not.
        context: the base model's context in tokens (None: unbounded).
    """

    network: Network
    tree_buffers: Callable[..., TreeBuffers]
    tree_policy: TreePolicy | None
    pool: CachePool
    level_history: LevelHistory
    tokenizer: PreTrainedTokenizerBase | None
    context: int | None


def _forward(model: Network, tokens: torch.Tensor, mask, positions: torch.Tensor, cache: MedusaKVCache,
             fold_gqa: bool = False):
    """Run ``tokens`` ``[batch, q]`` at ``positions`` ``[batch, q]`` into the cache, attending as ``mask`` allows
    (:func:`_mask`); returns hidden states ``[batch, q, d]``."""
    with grouped_query_attention(model.base_model.config) if fold_gqa else nullcontext():
        return model.hidden_states(tokens, mask, positions, cache)


def _mask(model: Network, cache: MedusaKVCache, new_mask: torch.Tensor, positions: torch.Tensor):
    """The attention mask of new tokens ``[batch, q]`` at ``positions`` that see each other as ``new_mask`` ``[q, q]``.

    The caller checks the cache's capacity first: reading its host-side length here would make a
    compiled step recompile for every length.
    """
    return model_attention_mask(model.base_model.config, cache.length, new_mask, positions, cache.span,
                                model.lm_head.weight.dtype)


def _per_row(tensor: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``tensor[b, index[b]]`` for every row b: ``[batch, n, ...]``, ``[batch]`` -> ``[batch, ...]`` (no host sync)."""
    return tensor[torch.arange(tensor.shape[0], device=tensor.device), index]


def draft(model: Network, buffers: TreeBuffers, cache: MedusaKVCache, root: torch.Tensor, hidden: torch.Tensor,
          text: torch.Tensor | None):
    """Fill each row's tree: the heads' top-k at ``hidden`` ``[batch, d]`` and the copy branches found in ``text``
    (:meth:`MedusaKVCache.text`; None for a tree without them), after ``root`` ``[batch]``.

    Returns tree_candidates ``[batch, T]``, candidates ``[batch, leaves, depth + 1]``, and the tree's attention
    mask and positions ``[batch, T]`` in the cache. Reads the cache, writes nothing.
    """
    head_logits = model.head_logits(hidden).transpose(0, 1) if buffers.head_depth else None  # [batch, heads, V]
    copies = None
    if buffers.copy_chains:
        copies = copy_candidates(text, cache.length, buffers.copy_chains, buffers.copy_depth)
    tree_candidates, candidates = generate_candidates(root, head_logits, buffers, copies)
    positions = cache.length[:, None] + buffers.position_ids
    return tree_candidates, candidates, _mask(model, cache, buffers.attn_mask, positions), positions


def verify(model: Network, buffers: TreeBuffers, tree_candidates: torch.Tensor, candidates: torch.Tensor,
           hidden: torch.Tensor, active: torch.Tensor, config: DecodingConfig, split_lengths: bool):
    """Accept a path of each row's tree from the base model's hidden states ``[batch, T, d]`` at its nodes.

    Returns what :func:`tree_step` returns, then the chosen path's node indices ``[batch, depth + 1]`` and the
    entries each row keeps in the cache ``[batch]`` (``accept_length + 1``, 0 for a row that is not active).
    """
    logits = model.lm_logits(hidden)  # [batch, T, V]
    both = buffers.head_depth > 0 and buffers.copy_chains > 0
    head_length = copy_length = none = torch.zeros_like(active, dtype=torch.long)
    if config.sampling == "lossless":
        rows = [evaluate_posterior_lossless(logits[b], tree_candidates[b], buffers, config.temperature, config.top_k,
                                            config.top_p, config.generator) for b in range(logits.shape[0])]
        path, accept_length, next_root = (torch.stack(column) for column in zip(*rows))
    else:
        if config.sampling == "greedy":
            predictions = logits.argmax(-1)[:, buffers.retrieve_indices]  # [batch, leaves, depth + 1]
            best, accept_length = evaluate_posterior_greedy(predictions, candidates, buffers.path_valid)
            next_root = _per_row(_per_row(predictions, best), accept_length)
            evaluate = lambda rows: evaluate_posterior_greedy(  # noqa: E731
                predictions[:, rows], candidates[:, rows], buffers.path_valid[rows])[1]
        else:
            path_logits = logits[:, buffers.retrieve_indices]
            typical = (config.temperature, config.posterior_threshold, config.posterior_alpha, config.top_k, config.top_p)
            best, accept_length = evaluate_posterior_typical(path_logits, candidates, buffers.path_valid, *typical)
            next_root = choose_root(_per_row(_per_row(path_logits, best), accept_length), config.temperature,
                                    config.top_k, config.top_p, config.generator)
            evaluate = lambda rows: evaluate_posterior_typical(  # noqa: E731
                path_logits[:, rows], candidates[:, rows], buffers.path_valid[rows], *typical)[1]
        path = buffers.retrieve_indices[best]  # [batch, depth + 1]
    # How far the head paths and the copy branches each got (the path rows: head leaves, then the chains)
    # tells trees that follow acceptance what a smaller tree would have accepted (medusa.model.adaptive).
    if both and split_lengths and config.sampling == "lossless":
        # The kind of the path's first node (head nodes come first; a token both propose counts as a head's).
        copied = path[:, 1] > buffers.num_nodes - 1 - buffers.copy_chains * buffers.copy_depth
        head_length, copy_length = torch.where(copied, none, accept_length), torch.where(copied, accept_length, none)
    elif both and split_lengths:
        first_chain = buffers.retrieve_indices.shape[0] - buffers.copy_chains
        head_length, copy_length = evaluate(slice(0, first_chain)), evaluate(slice(first_chain, None))
    elif not both:  # one kind of draft (or none): it got what the step accepted
        head_length = accept_length if buffers.head_depth else none
        copy_length = accept_length if buffers.copy_chains else none
    tokens = tree_candidates.gather(1, path)
    next_hidden = _per_row(hidden, _per_row(path, accept_length))
    return tokens, accept_length, head_length, copy_length, next_root, next_hidden, path, (accept_length + 1) * active


def tree_step(model: Network, buffers: TreeBuffers, cache: MedusaKVCache, root: torch.Tensor, hidden: torch.Tensor,
              active: torch.Tensor, config: DecodingConfig, split_lengths: bool = False, stages=(draft, verify)):
    """One Medusa step for a batch: verify every row's tree in one forward, accept a path per row, compact the cache.

    Greedy and typical steps have static shapes and no host synchronisation, so they can be captured
    in a CUDA graph. Lossless sampling walks each row's tree on the host (one sync per visited node)
    and draws the next root from its residual; greedy and typical take it from the base logits after
    the last accepted token.

    Args:
        root: ``[batch]`` the token that follows each row's accepted sequence.
        hidden: ``[batch, d]`` the base model's hidden state at each row's last accepted token (the
            heads' input; unused by a tree without head nodes).
        active: ``[batch]`` bool; a row that is not active keeps its cache length (finished rows
            waiting to be dropped from the batch).
        split_lengths: also verify the head paths and the copy branches apart, for trees that follow
            acceptance (a few more kernels per step, so only when asked).
        stages: the functions run before and after the forward, :func:`draft` and :func:`verify` or
            their compiled versions (:func:`compiled_tree_step`).

    Returns:
        tokens ``[batch, depth + 1]`` (each row's chosen path; its first ``accept_length + 1`` are
        new), accept_length ``[batch]``, head_length and copy_length ``[batch]`` (what the head paths
        and the copy branches each accepted; 0 for a kind the tree lacks, and 0 for both of a tree with
        both kinds without ``split_lengths``), the next roots ``[batch]``
        and the hidden states ``[batch, d]`` at each row's last accepted token.
    """
    draft_fn, verify_fn = stages
    text = cache.text(root) if buffers.copy_chains else None  # a write into the cache: kept out of the stages
    tree_candidates, candidates, mask, positions = draft_fn(model, buffers, cache, root, hidden, text)
    hidden = _forward(model, tree_candidates, mask, positions, cache, config.fold_gqa)
    tokens, *out, path, kept = verify_fn(model, buffers, tree_candidates, candidates, hidden, active, config,
                                         split_lengths)
    # The compaction stays out of the compiled stages: inductor would copy the whole buffer to update it.
    cache.accept(path, kept, tokens)
    return tokens, *out


def _token_budget(context: int | None, prompt_len: int, tree_size: int, depth: int, max_steps: int,
                  max_new_tokens: int | None) -> int:
    """New tokens to allow, so that prompt + new tokens + one tree fit in the model's ``context`` (None: unbounded)."""
    context = context or 2**31
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


def _integer(ids: torch.Tensor) -> bool:
    return not (ids.is_floating_point() or ids.is_complex() or ids.dtype == torch.bool)


def _prompt_list(input_ids) -> tuple[list[torch.Tensor], bool]:
    """``[1, L]`` tensor -> one prompt (streaming dicts); ``[B, L]`` tensor or a list of sequences -> a batch."""
    if isinstance(input_ids, torch.Tensor):
        if input_ids.ndim != 2:
            raise ValueError(f"input_ids must be [batch, prompt_len] or a list of prompts; got shape {tuple(input_ids.shape)}.")
        prompts, single = list(input_ids), input_ids.shape[0] == 1
    else:
        prompts, single = [torch.as_tensor(p) for p in input_ids], False
        if any(p.ndim != 1 for p in prompts):
            raise ValueError("A list of prompts must hold 1-D token id sequences.")
    not_integer = next((p for p in prompts if not _integer(p)), None)
    if not_integer is not None:
        raise ValueError(f"Token ids must be integers; got a prompt of dtype {not_integer.dtype}.")
    prompts = [p.long() for p in prompts]
    if not prompts or any(p.numel() == 0 for p in prompts):
        raise ValueError("The prompt is empty.")
    return prompts, single


@torch.inference_mode()
def medusa_generate(setup: DecodeSetup, input_ids, temperature: float = 0.0, max_steps: int = 512,
                    max_new_tokens: int | None = None, medusa_choices=None,
                    posterior_threshold: float = POSTERIOR_THRESHOLD, posterior_alpha: float = POSTERIOR_ALPHA,
                    eos_token_id: int | list[int] | None = None,
                    generator: torch.Generator | None = None, sampling: str | None = None, top_k: int = 0,
                    top_p: float = 1.0, cuda_graph: bool | None = None, tree_policy=None,
                    batch_size: int | None = None, compile_step: bool | str | None = None, fold_gqa: bool = False,
                    copy_chains: int | None = None, copy_depth: int = COPY_DEPTH,
                    adaptive: bool | None = None) -> Iterator:
    """Generate with Medusa heads, yielding after every step.

    Args:
        setup: what the loop uses of the model (``MedusaModel.medusa_generate`` passes its own).
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
        tree_policy: a :class:`~medusa.model.tree_policy.TreePolicy` (default ``setup.tree_policy``):
            the tree for each batch size from measured head accuracies and verify costs. Rows that
            finish are dropped from the batch, so the tree can grow as the batch shrinks.
        eos_token_id: stop token(s); None: the model's own (:func:`~medusa.model.eos.eos_token_ids`).
        generator: random generator (on the model's device) for all sampling; seed it for
            reproducible output.
        cuda_graph: replay each greedy step from a CUDA graph (default: on for CUDA models at
            temperature 0).
        compile_step: run the base model's decoder layers through ``torch.compile`` in each step
            (:mod:`medusa.model.compiled_layers`: their norms, rotary embedding and activations fused; one
            compile serves every layer), and the step's own work around the forward (:func:`draft`,
            :func:`verify`); greedy and typical sampling only. Each new tree, batch size or
            span (256 slots) compiles on first use: seconds, after which PyTorch's on-disk cache serves
            later processes; where compiling fails it warns once and runs uncompiled. In half precision the
            compiled step rounds differently, so its output can differ from the uncompiled one's. ``True``:
            a step waits while its variant compiles. ``"background"``: each variant runs uncompiled (from
            its CUDA graph where ``cuda_graph`` is on) while a worker thread compiles it
            (:mod:`medusa.model.compile_warmup`), then compiled from the next step after it is ready; while
            a variant compiles, every step waits longer for Python's lock and a graph is captured only
            between compiles; ``fold_gqa`` switches the shared model config while a step runs and should not
            be combined with it. ``False``: never compiled. None (default): ``cuda_graph``'s setting, as
            without a graph the per-layer dispatch of the compiled code costs more host time than it saves.
        copy_chains, copy_depth: copy branches (prompt lookup) added to the tree: ``copy_chains``
            chains of ``copy_depth`` tokens that followed the latest earlier occurrences of the text's
            last 1-3 tokens (in the prompt or the reply so far). 0 chains: heads only. Default
            (None): ``COPY_CHAINS`` beside head nodes, none for ``medusa_choices="none"`` (plain
            decoding); ``medusa_choices="none"`` with chains speculates copied tokens only.
        adaptive: let each step verify the part of the tree that pays (:mod:`medusa.model.adaptive`):
            all of it, the heads or the copy branches alone, or nothing, from each row's running acceptance
            and step times measured on this device. Default: on for greedy decoding on a CPU, where
            verification is dear; off on GPUs, where a tree costs little more than one token and the
            fixed tree measured faster (benchmarks/RESULTS.md), and for sampling, so that a seeded
            generator reproduces its output (the choice depends on measured times).
        fold_gqa: for grouped-query models, attend without copying the cache per layer
            (:mod:`medusa.model.attention`): faster at large batches, slightly slower at batch 1
            (benchmarks/HISTORY.md). Off by default: a tree policy's cost curve is measured with one
            setting and holds only for it.

    Yields:
        For one prompt, a dict with ``text`` (whole reply so far, special tokens skipped; None
        without a tokenizer), ``new_text``, ``new_token_ids`` (tokens this step added),
        ``accept_length`` (tokens accepted from the heads this step) and ``num_new_tokens``. For a
        batch, a list with one entry per prompt: such a dict (``text`` None) plus ``finished`` for
        the prompts decoded in this step, None for the others (waiting or finished). A prompt stops
        after EOS (tokens accepted after it are dropped) or at its token or step limit.
    """
    prompts, single = _prompt_list(input_ids)
    for name, value in (("max_steps", max_steps), ("max_new_tokens", max_new_tokens), ("batch_size", batch_size)):
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
            raise ValueError(f"{name} must be a positive integer; got {value!r}.")
    batch_size = min(batch_size or len(prompts), len(prompts))
    config = DecodingConfig(temperature, sampling, top_k, top_p, posterior_threshold, posterior_alpha, generator, fold_gqa)
    check_copy_shape(copy_chains, copy_depth)
    trees = _tree_chooser(setup, medusa_choices, tree_policy, copy_chains, copy_depth)
    used = [trees(n) for n in range(1, batch_size + 1)]  # every batch size the rows can shrink to
    tree_size, depth = max(b.num_nodes for b in used), max(b.depth for b in used)
    longest = max(p.shape[0] for p in prompts)
    budget = _token_budget(setup.context, longest, tree_size, depth, max_steps, max_new_tokens)
    device = setup.network.lm_head.weight.device
    cuda_graph, compile_step = resolve_step(device.type, config.sampling, cuda_graph, compile_step)
    if adaptive is None:
        adaptive = config.sampling == "greedy" and device.type == "cpu"
    step, later = {False: (tree_step, None), True: (compiled_tree_step, None),
                   "background": (tree_step, compiled_tree_step)}[compile_step]
    rows = RowScheduler([p.to(device) for p in prompts], batch_size, budget, max_steps,
                        set(eos_token_ids(setup.network.base_model, eos_token_id, setup.tokenizer)))
    decoder = _decode(setup, trees, step, rows, longest + budget + tree_size, cuda_graph, config, adaptive, later)
    yield from (_single(setup.tokenizer, decoder) if single else decoder)


def resolve_step(device_type: str, sampling: str, cuda_graph: bool | None = None,
                 compile_step: bool | str | None = None) -> tuple[bool, bool | str]:
    """The step :func:`medusa_generate` runs on a ``device_type`` model for ``sampling`` (greedy, typical or lossless):
    ``(cuda_graph, compile_step)`` with None resolved to the defaults. Raises ValueError for a combination it cannot run."""
    if cuda_graph is None:
        cuda_graph = device_type == "cuda" and sampling == "greedy"
    if cuda_graph and (device_type != "cuda" or sampling != "greedy"):
        raise ValueError("cuda_graph=True needs a CUDA model and greedy decoding (temperature 0).")
    if compile_step is None:
        compile_step = cuda_graph
    if not isinstance(compile_step, bool) and compile_step != "background":
        raise ValueError(f'compile_step must be None, True, False or "background"; got {compile_step!r}.')
    if compile_step and sampling == "lossless":
        raise ValueError(f"compile_step={compile_step!r} needs greedy or typical sampling (lossless sampling walks "
                         "the tree on the host).")
    return cuda_graph, compile_step


COMPILE_BACKEND = "inductor"


def compiled_tree_step(model: Network, buffers: TreeBuffers, cache: MedusaKVCache, *args, **kwargs):
    """:func:`tree_step` compiled: the base model's decoder layers (:mod:`medusa.model.compiled_layers`) and the
    step's own work before and after the forward (:func:`draft`, :func:`verify`: heads, top-k, copy branches, mask,
    posterior), each stage one graph per tree, batch size and span instead of a hundred-odd small kernels.

    Where the compile fails, warns once and runs uncompiled from then on: a step cut short by the failure
    only wrote cache slots past each row's length, which the uncompiled run writes again.
    """
    base = model.base_model
    if compilable(base):
        try:
            with compiled_layers(base, COMPILE_BACKEND):
                return tree_step(model, buffers, cache, *args, stages=_compiled_stages(COMPILE_BACKEND), **kwargs)
        except torch._dynamo.exc.TorchDynamoException as error:  # inductor's errors derive from it too
            give_up(base, error)
    return tree_step(model, buffers, cache, *args, **kwargs)


# Inductor's persistent reductions (a whole row per thread block) asserted an out-of-bounds index in the rows a block
# masks off, in verify's argmax over paths followed by indexing, at batch sizes above 1 (H200, torch 2.11); with
# looped reductions the same kernels ran. Its reductions are over a few dozen paths: the loop costs nothing here.
VERIFY_INDUCTOR_OPTIONS = {"triton.persistent_reductions": False}


@lru_cache(maxsize=None)
def _compiled_stages(backend) -> tuple[Callable, Callable]:
    """:func:`draft` and :func:`verify` through ``torch.compile`` (made once per backend; dynamo keeps a graph per
    input shape and setting)."""
    options = VERIFY_INDUCTOR_OPTIONS if backend == "inductor" else None
    return (torch.compile(draft, backend=backend, dynamic=False),
            torch.compile(verify, backend=backend, dynamic=False, options=options))


def check_copy_shape(copy_chains: int | None, copy_depth: int) -> None:
    """ValueError unless the copy branches' shape is valid (None chains: the default)."""
    for name, value in (("copy_chains", copy_chains), ("copy_depth", copy_depth)):
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 0):
            raise ValueError(f"{name} must be a non-negative integer; got {value!r}.")
    if copy_chains and not copy_depth:
        raise ValueError("copy_depth must be at least 1 when copy_chains > 0.")


def _tree_chooser(setup: DecodeSetup, medusa_choices, tree_policy, copy_chains: int | None, copy_depth: int):
    """``batch_size -> TreeBuffers``: the fixed tree, else the policy's, else the default tree; with the copy
    branches (by default, beside head nodes only: ``"none"`` stays plain decoding)."""
    policy = tree_policy or setup.tree_policy

    def buffers(choices):
        chains = (0 if choices == "none" else COPY_CHAINS) if copy_chains is None else copy_chains
        return setup.tree_buffers(choices, chains, copy_depth if chains else 0)

    if medusa_choices is not None or policy is None:
        return lambda batch_size: buffers(medusa_choices)
    return lambda batch_size: buffers(policy.choices(batch_size))


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


def prefill(model: Network, prompts: list[torch.Tensor], cache: MedusaKVCache, fold_gqa: bool = False) -> torch.Tensor:
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
    hidden = _forward(model, padded, _mask(model, cache, causal, positions), positions, cache, fold_gqa)
    hidden = _per_row(hidden, prompt_lens - 1)  # [batch, d]
    cache.commit(prompt_lens, padded)
    return hidden


def _levels(setup: DecodeSetup, trees, batch_size: int, adaptive: bool) -> list[TreeBuffers]:
    """The trees a step at ``batch_size`` rows may verify, smallest first (:mod:`medusa.model.adaptive`)."""
    full = trees(batch_size)
    return draft_levels(full, setup.tree_buffers) if adaptive else [full]


def _row_texts(rows: RowScheduler, roots: list[int]) -> dict[int, torch.Tensor]:
    """Each live cache row's text for trees that follow acceptance: prompt, reply so far and next root (1-D)."""
    return {r: torch.cat([rows.prompts[i], torch.tensor(rows.outputs[i] + [roots[r]], device=rows.prompts[i].device)])
            for r, i in enumerate(rows.rows) if i is not None}


def _decode(setup: DecodeSetup, trees, step_fn, rows: RowScheduler, capacity: int, cuda_graph: bool, config: DecodingConfig,
            adaptive: bool, compiled: Callable | None = None) -> Iterator[list[dict | None]]:
    """Prefill the first ``rows.batch_size`` prompts in one right-padded forward, then batched steps; rows that
    finish take the next waiting prompts, and once none wait, leave the batch. See :func:`medusa_generate`.

    ``compiled``: the compiled step, asked of ``setup.pool.compiler`` for each variant ``step_fn`` runs and
    used in its place once ready (None: ``step_fn`` throughout)."""
    device = rows.prompts[0].device
    network = setup.network
    compiler = setup.pool.compiler
    # Dynamo guards on the settings and on whether a generator is given, not on which: they key a variant.
    # The worker samples with a generator of its own, so a seeded generator gives the same output.
    settings = replace(config, generator=None), config.generator is None
    worker_config = config if config.generator is None else replace(config, generator=torch.Generator(device))

    def start(cache: MedusaKVCache):
        """Prefill the next ``cache.batch_size`` waiting prompts into ``cache``: (their indices, roots, hidden states)."""
        new = rows.take(cache.batch_size)
        hidden = prefill(network, [rows.prompts[i] for i in new], cache, config.fold_gqa)
        return new, choose_root(network.lm_logits(hidden), config.temperature, config.top_k, config.top_p,
                                config.generator), hidden

    with ExitStack() as stack:
        cache, graphs = stack.enter_context(setup.pool.take(capacity, rows.batch_size))
        rows.rows, root, hidden = start(cache)
        levels = _levels(setup, trees, cache.batch_size, adaptive)
        follower = AcceptanceFollower(levels, setup.level_history, cache.batch_size)
        follower.reset_rows(list(range(cache.batch_size)), [rows.prompts[i].shape[0] for i in rows.rows])
        if len(levels) > 1:
            follower.replay(_row_texts(rows, root.tolist()))
        active = torch.ones(cache.batch_size, dtype=torch.bool, device=device)
        while True:
            live = [r for r, i in enumerate(rows.rows) if i is not None]
            level = follower.choose(cache.batch_size, live) if len(levels) > 1 else 0
            buffers, split = levels[level], len(levels) > 1
            cache.check_capacity(buffers.num_nodes)
            span = cache.fit_span(buffers.num_nodes)
            shape = (buffers.key, span, config.fold_gqa, split)
            fn = step_fn
            if compiled is not None:  # the compiled variant once the worker has it ready
                variant = (compiled, *shape, cache.batch_size, cache.capacity, settings)
                if compiler.ready(variant):
                    fn = compiled
                    graphs.pop((step_fn, *shape), None)  # the uncompiled graph's memory
            step = partial(fn, network, buffers, cache, config=config, split_lengths=split)
            if cuda_graph:  # one graph per step function, tree, span, attention and split: a few per generation
                key = (fn, *shape)
                # While the worker runs a compile on the device this step runs eagerly, and is captured later.
                if key not in graphs and compiler.device_lock.acquire(blocking=False):
                    try:
                        graphs[key] = GraphedStep(step, (root, hidden, active), cache)
                    finally:
                        compiler.device_lock.release()
                step = graphs.get(key, step)
            if fn is not compiled and compiled is not None:  # asked after the capture, which the worker would delay
                compiler.request(variant, scratch_run(setup.pool, cache, partial(
                    compiled, network, buffers, config=worker_config, split_lengths=split), (root, hidden, active)))
            started = time.perf_counter()
            tokens, accept_length, head_length, copy_length, root, hidden = step(root, hidden, active)
            host = torch.cat([accept_length[:, None], head_length[:, None], copy_length[:, None], root[:, None], tokens],
                             dim=1).tolist()  # the step's one host sync
            report, finished = rows.record([[h[0]] + h[4:] for h in host])
            if len(levels) > 1:
                setup.level_history.record(cache.batch_size, buffers, time.perf_counter() - started)
                follower.update(level, live, [h[1] for h in host], [h[2] for h in host])
                follower.replay(_row_texts(rows, [h[3] for h in host]))
                follower.finish_rows([r for r in live if rows.rows[r] is None])
            yield report
            if finished:
                if rows.done:
                    return
                free = rows.rows_to_refill()
                if free:  # prefill waiting prompts apart, then copy them into the free rows
                    longest = max(rows.prompts[i].shape[0] for i in rows.waiting[-len(free):])
                    fresh = setup.pool.new_cache(longest, len(free))
                    new, fresh_root, fresh_hidden = start(fresh)
                    index = torch.tensor(free, device=device)
                    fresh.copy_rows_to(cache, torch.arange(len(free), device=device), index)
                    root = root.index_copy(0, index, fresh_root)
                    hidden = hidden.index_copy(0, index, fresh_hidden)
                    for r, i in zip(free, new):
                        rows.rows[r] = i
                    follower.reset_rows(free, [rows.prompts[i].shape[0] for i in new])
                    if len(levels) > 1:
                        follower.replay(_row_texts(rows, root.tolist()))
                keep = rows.rows_to_keep()
                if keep is not None:  # drop finished rows into a smaller cache
                    index = torch.tensor(keep, device=device)
                    smaller, graphs = stack.enter_context(setup.pool.take(capacity, len(keep)))
                    cache.copy_rows_to(smaller, index)
                    cache, root, hidden = smaller, root[index], hidden[index]
                    rows.rows = [rows.rows[r] for r in keep]
                    levels = _levels(setup, trees, cache.batch_size, adaptive)
                    follower = follower.resized(levels, keep)
                active = torch.tensor(rows.active(), device=device)
            cache.host_length = rows.longest()
