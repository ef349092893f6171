"""4D additive attention masks over the static KV cache (docs/design.md, The KV cache).

Stock HF models take a 4D float mask ``(batch, 1, q, kv)`` unchanged: 0 where a query may attend,
``finfo(dtype).min`` where it may not. (A bool 4D mask is silently wrong under eager attention.)
Because the mask replaces the model's own masking, sliding-window layers get their window here.
"""

import torch


def attention_mask(cache_length: torch.Tensor, new_mask: torch.Tensor, positions: torch.Tensor, span: int,
                   dtype: torch.dtype, sliding_window: int | None = None) -> torch.Tensor:
    """Mask for ``q`` new tokens per row, row b's written at cache slots ``[cache_length[b], cache_length[b] + q)``.

    Built with tensor ops only (``cache_length`` is a device tensor), so it can be captured in a CUDA
    graph.

    Args:
        cache_length: ``[batch]`` committed tokens; slot j < cache_length[b] holds row b's token at
            position j.
        new_mask: ``[q, q]`` bool, which new tokens each new token sees (causal for a prompt,
            ancestors for a tree); the same for every row.
        positions: ``[batch, q]`` position ids of the new tokens.
        span: cache slots attended over (from slot 0).
        sliding_window: if set, a query at position p only sees keys at positions > p - window.

    Returns:
        ``[batch, 1, q, span]`` in ``dtype``.
    """
    q = new_mask.shape[0]
    slots = torch.arange(span, device=new_mask.device)
    offset = slots[None, :] - cache_length[:, None]  # [batch, span]; >= 0 for the new tokens' slots
    new_index = offset.clamp(0, q - 1)
    sees_new = new_mask[:, new_index].transpose(0, 1)  # [batch, q, span]
    allowed = (offset < 0)[:, None, :] | (sees_new & (offset < q)[:, None, :])
    if sliding_window is not None:
        key_positions = torch.where(offset < 0, slots[None, :], positions.gather(1, new_index))
        allowed &= key_positions[:, None, :] > positions[:, :, None] - sliding_window
    mask = torch.zeros(allowed.shape, dtype=dtype, device=new_mask.device)
    mask.masked_fill_(~allowed, torch.finfo(dtype).min)
    return mask[:, None]


def model_attention_mask(config, cache_length: torch.Tensor, new_mask: torch.Tensor, positions: torch.Tensor,
                         span: int, dtype: torch.dtype) -> torch.Tensor | dict[str, torch.Tensor]:
    """The mask in the form the model's config asks for.

    Models with per-layer attention types (``config.layer_types``, e.g. Qwen2, Gemma2/3) take a dict
    ``{layer type: mask}``; a model with one global ``sliding_window`` (Mistral) takes one windowed
    mask; others one plain mask.
    """
    config = config.get_text_config()
    window = getattr(config, "sliding_window", None)
    layer_types = getattr(config, "layer_types", None)
    if layer_types:
        unsupported = set(layer_types) - {"full_attention", "sliding_attention"}
        if unsupported:
            raise ValueError(f"Tree attention does not support the layer types {sorted(unsupported)}.")
        return {
            kind: attention_mask(cache_length, new_mask, positions, span, dtype,
                                 window if kind == "sliding_attention" else None)
            for kind in set(layer_types)
        }
    return attention_mask(cache_length, new_mask, positions, span, dtype, window)
