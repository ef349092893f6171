"""A pre-allocated KV cache owned by the library, handed to stock HF models as a ``Cache``.

One buffer pair per layer, ``[batch, kv_heads, capacity, head_dim]``, the token ids of the cached
entries ``[batch, capacity]`` (the text that copy branches look up), and one committed length per row.
A forward over ``q`` new tokens writes row b's at slots ``[length[b], length[b] + q)`` and
attends over the first ``span`` slots (a multiple of ``SLOT_BLOCK`` that holds every row and the new
tokens, so early steps skip the empty end of the buffer); the 4D mask (:mod:`medusa.model.masks`)
hides slots that hold nothing valid. After a tree step, :meth:`MedusaKVCache.accept` moves each row's accepted path to the front of
its free region in place. The buffers never change shape, which keeps every step's shapes static.
"""

import torch
from transformers.cache_utils import Cache, CacheLayerMixin


class CacheCapacityError(RuntimeError):
    """A write that would run past the pre-allocated capacity (nothing is written)."""


# Cache capacities and attention spans come in blocks of slots: one CUDA graph per span, few spans.
SLOT_BLOCK = 256


def round_up_to_block(slots: int) -> int:
    """``slots`` rounded up to a multiple of ``SLOT_BLOCK``."""
    return -(-slots // SLOT_BLOCK) * SLOT_BLOCK


def free_memory(device: torch.device) -> int | None:
    """Bytes a new buffer on ``device`` could take: free device memory plus what torch's allocator holds
    unused (CUDA), or the kernel's MemAvailable (CPU on Linux); None where neither is known."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
    if device.type == "cpu":
        try:
            with open("/proc/meminfo") as f:
                return next(int(line.split()[1]) * 1024 for line in f if line.startswith("MemAvailable:"))
        except (OSError, StopIteration):
            return None
    return None


class _StaticKVLayer(CacheLayerMixin):
    """One layer's buffers; writes go through :meth:`MedusaKVCache.update`."""

    def __init__(self, keys: torch.Tensor, values: torch.Tensor):
        super().__init__()
        self.keys, self.values = keys, values
        self.is_initialized = True

    def lazy_initialization(self, key_states, value_states):
        raise RuntimeError("MedusaKVCache layers are allocated up front.")

    def update(self, key_states, value_states, *args, **kwargs):
        raise RuntimeError("Write through MedusaKVCache.update.")

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return self.keys.shape[-2], 0

    def get_seq_length(self) -> int:
        raise RuntimeError("Ask the MedusaKVCache for its length.")

    def get_max_length(self) -> int:
        return self.keys.shape[-2]


class MedusaKVCache(Cache):
    """Static KV cache for a batch: per-row committed lengths and in-place compaction of accepted tree nodes.

    The write offsets ``length`` ``[batch]`` live on the device, so a whole decode step (writes, mask,
    compaction) runs without reading them on the host and can be captured in a CUDA graph.
    ``host_length`` is the longest row's length, kept on the host for capacity checks; the decode
    loop updates it once per step when it reads the accepted tokens back. Forwards attend over the
    first ``span`` slots (:meth:`fit_span`).

    Args:
        num_layers, num_kv_heads, head_dim: of the base model's attention layers.
        capacity: slots per layer (prompt + new tokens + one tree of headroom).
        batch_size, dtype, device: of the buffers.
    """

    def __init__(self, num_layers: int, num_kv_heads: int, head_dim: int, capacity: int,
                 batch_size: int = 1, dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu"):
        # One tensor for all layers' keys and values: compaction after a step is then one gather and
        # one scatter, not four kernels per layer (launches dominate a small model's step).
        self.buffer = torch.zeros(num_layers, 2, batch_size, num_kv_heads, capacity, head_dim, dtype=dtype, device=device)
        super().__init__(layers=[_StaticKVLayer(self.buffer[i, 0], self.buffer[i, 1]) for i in range(num_layers)])
        self.capacity = capacity
        self.tokens = torch.zeros(batch_size, capacity, dtype=torch.long, device=device)  # ids of the cached entries
        self.length = torch.zeros(batch_size, dtype=torch.long, device=device)
        self.host_length = 0
        self.span = capacity
        self.in_use = False
        self._slots = torch.arange(capacity, device=device)
        # The buffer's indices for update's write: layer, keys or values, row, head.
        self._layer_ids = torch.arange(num_layers, device=device)
        self._kinds = torch.arange(2, device=device)[:, None, None, None]
        self._rows = torch.arange(batch_size, device=device)[:, None, None]
        self._heads = torch.arange(num_kv_heads, device=device)[None, :, None]

    @classmethod
    def for_model(cls, model, capacity: int, batch_size: int = 1) -> "MedusaKVCache":
        """A cache shaped for the HF causal LM ``model``, in its dtype and on its device."""
        config = model.config.get_text_config()
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        num_kv_heads = getattr(config, "num_key_value_heads", None) or config.num_attention_heads
        weight = model.get_output_embeddings().weight
        return cls(config.num_hidden_layers, num_kv_heads, head_dim, capacity, batch_size, weight.dtype, weight.device)

    def bytes_per_slot(self) -> int:
        """Bytes one slot of one row takes over all layers (keys and values)."""
        return self.buffer.element_size() * self.buffer.numel() // (self.batch_size * self.capacity)

    @property
    def batch_size(self) -> int:
        return self.length.shape[0]

    def reset(self) -> None:
        """Forget every entry (the buffers keep their contents; the mask hides them)."""
        self.length.zero_()
        self.host_length = 0
        self.span = self.capacity

    def check_capacity(self, num_new: int) -> None:
        """Raise :class:`CacheCapacityError` unless ``num_new`` more slots fit after ``host_length``.

        Call before a forward over ``num_new`` tokens: the writes themselves are not checked, to keep
        them free of host synchronisation.
        """
        if self.host_length + num_new > self.capacity:
            raise CacheCapacityError(
                f"KV cache overflow: {self.host_length} tokens cached + {num_new} new > capacity {self.capacity}. "
                "Allocate a larger cache (prompt + max_new_tokens + tree size)."
            )

    def fit_span(self, num_new: int) -> int:
        """Attend over the fewest slots, rounded up to ``SLOT_BLOCK``, that hold ``host_length + num_new`` tokens; returns it.

        Set before each forward (a step captured in a CUDA graph keeps the span it was captured with).
        """
        self.span = min(self.capacity, round_up_to_block(self.host_length + num_new))
        return self.span

    def _after_length(self, offsets: torch.Tensor) -> torch.Tensor:
        """Per-row slots ``length[b] + offsets[..., i]``: ``[batch, n]`` for ``offsets`` ``[n]`` or ``[batch, n]``."""
        return self.length[:, None] + offsets

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, layer_idx: int, *args, **kwargs):
        """Write row b of ``key/value_states`` ``[batch, kv_heads, q, head_dim]`` at slots ``[length[b], length[b]+q)``.

        Returns the first ``span`` slots of the buffers ``[batch, kv_heads, span, head_dim]``; the
        attention mask decides which of them count.
        """
        slots = self._after_length(self._slots[: key_states.shape[-2]])[:, None, :]  # [batch, 1, q]
        # One indexed write into the shared buffer itself, not into a view of this layer's part: compiled per
        # decoder layer (medusa.model.compiled_layers) with a traced layer index, a write through such a view was
        # copied back over the whole buffer, while this one inductor does in place. Detached: nothing is
        # differentiated through a decoding cache (and autograd refuses in-place writes of grad-carrying states).
        index = (self._layer_ids[layer_idx], self._kinds, self._rows, self._heads, slots)  # -> [2, batch, kv_heads, q]
        self.buffer.index_put_(index, torch.stack([key_states, value_states]).detach())
        layer = self.buffer.select(0, layer_idx)  # (indexing with [layer_idx] specialised dynamo on the index)
        return layer[0, :, :, : self.span], layer[1, :, :, : self.span]

    def commit(self, num_tokens: torch.Tensor | int, token_ids: torch.Tensor | None = None) -> None:
        """Count the ``num_tokens`` (int, or ``[batch]`` on the device) entries just written as part of each row.

        ``token_ids`` ``[batch, n]``: their ids (row b's first ``num_tokens[b]``), recorded in :attr:`tokens`.
        """
        num_tokens = torch.as_tensor(num_tokens, device=self.length.device).expand(self.batch_size)
        longest = int((self.length + num_tokens).max())
        self.check_capacity(longest - self.host_length)
        if token_ids is not None:
            self._write_tokens(token_ids)
        self.length += num_tokens
        self.host_length = longest

    def _write_tokens(self, token_ids: torch.Tensor) -> None:
        """Record ``token_ids`` ``[batch, n]`` at slots ``[length[b], length[b] + n)`` (entries past what a row
        keeps are overwritten by its next write)."""
        self.tokens.scatter_(1, self._after_length(self._slots[: token_ids.shape[1]]), token_ids)

    def accept(self, node_indices: torch.Tensor, num_accepted: torch.Tensor, token_ids: torch.Tensor) -> None:
        """Keep each row's accepted path of the tree just written after its ``length`` (device side only).

        Args:
            node_indices: ``[batch, depth + 1]`` tree node indices of one path per row (padding may be
                any valid index); entry i moves to slot ``length[b] + i``. Consecutive entries need not
                be parent and child, only carry the same tokens as a root-to-node path.
            num_accepted: ``[batch]`` how many leading entries of each path were accepted; ``length``
                grows by it. The caller updates ``host_length`` once it has read the counts.
            token_ids: ``[batch, depth + 1]`` the path's tokens.
        """
        shape = self.buffer[..., : node_indices.shape[1], :].shape
        src = self._after_length(node_indices)[:, None, :, None].expand(shape)
        dst = self._after_length(self._slots[: node_indices.shape[1]])[:, None, :, None].expand(shape)
        # gather copies first, so overlapping src/dst is safe.
        self.buffer.scatter_(4, dst, self.buffer.gather(4, src))
        self._write_tokens(token_ids)
        self.length += num_accepted

    def text(self, root: torch.Tensor) -> torch.Tensor:
        """Each row's cached token ids followed by ``root`` ``[batch]``: ``[batch, span]``, row b's first
        ``length[b] + 1`` entries valid (device side only; writes the root into :attr:`tokens`, where the
        step's accepted path, which starts with it, lands anyway)."""
        self.tokens.scatter_(1, self.length[:, None], root[:, None])
        return self.tokens[:, : self.span]

    def copy_rows_to(self, target: "MedusaKVCache", rows: torch.Tensor, target_rows: torch.Tensor | None = None) -> None:
        """Copy ``rows`` ``[n]`` of this cache (entries and lengths) into rows ``target_rows`` of ``target``.

        Without ``target_rows``, into all of ``target``'s rows (``n == target.batch_size``): dropping
        finished sequences. With them, into those rows only: starting waiting prompts in a running
        batch. This cache may be shorter than ``target``; the caller sets ``target.host_length``.
        """
        entries = self.buffer.index_select(2, rows)
        if target_rows is None:
            target_rows = torch.arange(target.batch_size, device=rows.device)
        target.buffer[..., : self.capacity, :].index_copy_(2, target_rows, entries)
        target.tokens[:, : self.capacity].index_copy_(0, target_rows, self.tokens.index_select(0, rows))
        target.length.index_copy_(0, target_rows, self.length.index_select(0, rows))

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self.host_length
