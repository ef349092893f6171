"""4D additive attention masks over the static KV cache (DESIGN.md §7).

Stock HF models take a 4D float mask ``(batch, 1, q, kv)`` unchanged: 0 where a query may attend,
``finfo(dtype).min`` where it may not. (A bool 4D mask is silently wrong under eager attention.)
Because the mask replaces the model's own masking, sliding-window layers get their window here.
"""

import torch


def attention_mask(cache_length: torch.Tensor | int, new_mask: torch.Tensor, positions: torch.Tensor, capacity: int,
                   dtype: torch.dtype, sliding_window: int | None = None) -> torch.Tensor:
    """Mask for ``q`` new tokens written at cache slots ``[cache_length, cache_length + q)``.

    Built with tensor ops only (``cache_length`` may be a device tensor), so it can be captured in a
    CUDA graph.

    Args:
        cache_length: committed tokens; slot j < cache_length holds the token at position j.
        new_mask: ``[q, q]`` bool, which new tokens each new token sees (causal for a prompt,
            ancestors for a tree).
        positions: ``[q]`` position ids of the new tokens.
        capacity: width of the cache buffers.
        sliding_window: if set, a query at position p only sees keys at positions > p - window.

    Returns:
        ``[1, 1, q, capacity]`` in ``dtype``.
    """
    q = new_mask.shape[0]
    slots = torch.arange(capacity, device=new_mask.device)
    offset = slots - cache_length  # [capacity]; >= 0 for the new tokens' slots
    new_index = offset.clamp(0, q - 1)
    allowed = (offset < 0)[None, :] | (new_mask[:, new_index] & (offset < q)[None, :])
    if sliding_window is not None:
        key_positions = torch.where(offset < 0, slots, positions[new_index])
        allowed &= key_positions[None, :] > positions[:, None] - sliding_window
    mask = torch.zeros(q, capacity, dtype=dtype, device=new_mask.device)
    mask.masked_fill_(~allowed, torch.finfo(dtype).min)
    return mask[None, None]


def model_attention_mask(config, cache_length: int, new_mask: torch.Tensor, positions: torch.Tensor,
                         capacity: int, dtype: torch.dtype) -> torch.Tensor | dict[str, torch.Tensor]:
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
            kind: attention_mask(cache_length, new_mask, positions, capacity, dtype,
                                 window if kind == "sliding_attention" else None)
            for kind in set(layer_types)
        }
    return attention_mask(cache_length, new_mask, positions, capacity, dtype, window)
