"""What decoding keeps on the device between generations: one :class:`MedusaKVCache` per batch size, the
CUDA graphs captured on it (so that graphs are captured once for many prompts), the tree buffers
they read (docs/design.md, "The KV cache") and the background compiler of decode steps.

A graph reads the weights, caches and buffers it was captured on at their addresses, so a model whose
weights move or change dtype takes a new pool: see ``MedusaModel``."""

from collections.abc import Iterator
from contextlib import contextmanager

from transformers import PreTrainedModel

from .compile_warmup import BackgroundCompiler
from .cuda_graph import GraphedStep
from .kv_cache import MedusaKVCache, free_memory, round_up_to_block
from .tree import TreeBuffers, generate_medusa_buffers


class CachePool:
    """Pooled decode caches of one base model, all of one capacity, the graphs captured on each, tree buffers, and
    the compiler that compiles decode steps in the background for this model (:mod:`medusa.model.compile_warmup`).

    Args:
        base_model: the HF causal LM the caches are shaped for (in its dtype, on its device at allocation).
        context: the model's context in tokens, the most a growing pool doubles to (None: no doubling).
    """

    def __init__(self, base_model: PreTrainedModel, context: int | None):
        self.base_model, self.context = base_model, context
        self.caches: dict[int, MedusaKVCache] = {}  # by batch size
        self.graphs: dict[int, dict[tuple, GraphedStep]] = {}  # by batch size, then by the decode loop's key
        self.trees: dict[tuple, TreeBuffers] = {}  # by (head paths, copy chains, copy depth)
        self.compiler = BackgroundCompiler()

    def tree_buffers(self, paths: list[list[int]], copy_chains: int, copy_depth: int) -> TreeBuffers:
        """The buffers of a tree of head ``paths`` with copy branches, on the base model's device, built once."""
        key = (tuple(map(tuple, paths)), copy_chains, copy_depth)
        if key not in self.trees:
            device = self.base_model.get_output_embeddings().weight.device
            self.trees[key] = generate_medusa_buffers(paths, device, copy_chains, copy_depth)
        return self.trees[key]

    def new_cache(self, capacity: int, batch_size: int) -> MedusaKVCache:
        """A zero-length cache outside the pool (prefilling waiting prompts apart)."""
        return MedusaKVCache.for_model(self.base_model, capacity, batch_size)

    @contextmanager
    def take(self, capacity: int, batch_size: int = 1) -> Iterator[tuple[MedusaKVCache, dict[tuple, GraphedStep]]]:
        """A zero-length cache of ``batch_size`` rows and at least ``capacity`` slots, and the graphs captured on it.

        Capacity is rounded up to a slot block and shared by every batch size, so rows can move between
        them; a call made while another generation holds that cache gets a private one (and no graphs).
        A call longer than the pool moves every batch size to at least twice the capacity (at most the
        context), so a workload of growing prompts drops and recaptures its graphs only a few times. It
        grows to just ``capacity`` instead when the doubled cache would take more than half the memory
        free on its device: doubling a large batch near the context can double a run's footprint.
        """
        pooled = list(self.caches.values())
        if pooled and pooled[0].capacity < capacity:
            doubled = round_up_to_block(min(2 * pooled[0].capacity, self.context or capacity))
            doubled_bytes = pooled[0].bytes_per_slot() * batch_size * doubled
            device = pooled[0].buffer.device
            del pooled  # the old buffers count as free once the pool lets them go
            self.caches, self.graphs = {}, {}
            free = free_memory(device)
            if free is None or doubled_bytes <= free // 2:
                capacity = max(capacity, doubled)
        capacity = max([round_up_to_block(capacity)] + [c.capacity for c in self.caches.values()])
        cache = self.caches.get(batch_size)
        if cache is not None and cache.in_use:
            cache = self.new_cache(capacity, batch_size)
            cache.in_use = True
            yield cache, {}
            return
        if cache is None:
            cache = self.caches[batch_size] = self.new_cache(capacity, batch_size)
            self.graphs[batch_size] = {}
        cache.reset()
        cache.in_use = True
        try:
            yield cache, self.graphs[batch_size]
        finally:
            cache.in_use = False
