"""Masked attention for grouped-query models without copying the KV cache.

With a mask, Hugging Face's SDPA path repeats each key/value head once per query head that shares it
(``repeat_kv``) before attending. That is a copy of the cache's attended span in every layer of every
step. At large batches and long contexts it moves more bytes than the attention itself; on the demo
model at batch 1 it is ~60 copy kernels per step. Here the G query heads that share a key/value head
are folded into the query length instead, and the mask is tiled to match, so SDPA reads the cache as
it is. The result is exact: every (head, query) row sees the same keys, values and mask row as before.

It pays only where the copy is large: measured on a GPU (benchmarks/HISTORY.md, third GPU session),
it made a large-batch greedy step much faster but a batch-1 Medusa step slightly slower (tiling the
mask and copying the query cost more launches than the small copy saved). Below ``FOLD_MIN_BYTES`` of
copy per layer (between the two measured points: batch 1 copies 0.8 MB, batch 64 50 MB; not tuned)
Hugging Face's path runs. So does a forward whose tiled mask would outweigh the copy,
``q >= 2 * head_dim * kv_heads`` for same-size elements: a prompt. Tiling a batch of long prompts' masks
had taken tens of GB during data generation on the H200.

Decoding uses it when asked (``medusa_generate(..., fold_gqa=True)``; the data generation back end
does), for its own forwards only (:func:`grouped_query_attention`): other calls of the base model are
untouched.
"""

from contextlib import contextmanager

import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

NAME = "medusa_grouped_sdpa"
FOLD_MIN_BYTES = 4 * 2**20  # of keys and values that repeat_kv would add, per layer


def grouped_sdpa_attention(module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                           attention_mask: torch.Tensor | None, dropout: float = 0.0, scaling: float | None = None,
                           **kwargs) -> tuple[torch.Tensor, None]:
    """Hugging Face's SDPA attention, with grouped query heads folded into the query length.

    Args:
        query: ``[batch, heads, q, head_dim]``.
        key, value: ``[batch, kv_heads, kv_len, head_dim]``; ``heads = kv_heads * G``, head ``h`` reads
            key/value head ``h // G``.
        attention_mask: ``[batch, 1, q, >= kv_len]`` additive or boolean, shared by all heads.

    Returns:
        (``[batch, q, heads, head_dim]``, None), as Hugging Face's attention functions.

    Anything else (no mask, per-head masks, dropout, position bias, soft-capping, no grouping, a copy
    under ``FOLD_MIN_BYTES``, or one smaller than the mask's tiling: long queries such as a prompt's) goes
    to Hugging Face's own SDPA function unchanged.
    """
    groups = query.shape[1] // key.shape[1]
    copy_bytes = 2 * (groups - 1) * key.numel() * key.element_size()
    plain = (groups == 1 or attention_mask is None or attention_mask.ndim != 4 or attention_mask.shape[1] != 1
             or dropout or kwargs.get("position_bias") is not None or kwargs.get("softcap") is not None
             or copy_bytes < FOLD_MIN_BYTES
             # the tiled mask grows with the query: a prompt's outweighs the copy
             or copy_bytes <= (groups - 1) * query.shape[0] * query.shape[2] * key.shape[2]
             * attention_mask.element_size())
    if plain:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      **kwargs)
    batch, heads, q_len, head_dim = query.shape
    folded = query.reshape(batch, key.shape[1], groups * q_len, head_dim)  # row g * q_len + i: head kv * G + g, query i
    mask = attention_mask[..., : key.shape[2]].repeat(1, 1, groups, 1)  # [batch, 1, G * q_len, kv_len]
    out = torch.nn.functional.scaled_dot_product_attention(folded, key, value, attn_mask=mask, scale=scaling)
    return out.reshape(batch, heads, q_len, value.shape[-1]).transpose(1, 2).contiguous(), None


AttentionInterface.register(NAME, grouped_sdpa_attention)
AttentionMaskInterface.register(NAME, sdpa_mask)  # masks are built as for SDPA where a model builds its own


@contextmanager
def grouped_query_attention(config):
    """Inside, the model of ``config`` attends with :func:`grouped_sdpa_attention` if it uses SDPA."""
    text_config = config.get_text_config()
    if text_config._attn_implementation != "sdpa":
        yield
        return
    text_config._attn_implementation = NAME
    try:
        yield
    finally:
        text_config._attn_implementation = "sdpa"
