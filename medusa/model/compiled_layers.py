"""Decode steps with the base model's decoder layers compiled: regional compilation.

A decode step of a small model is a thousand-odd small kernels, most of them the base model's own
unfused element-wise work (norms, rotary embedding, activations, residual adds) repeated in every
layer. ``torch.compile`` fuses them, but compiling the whole step traces every layer and every Medusa
operation into one large graph per tree, batch size and span, each a long compile.

Every decoder layer runs the same code on weights of the same shapes, so here each layer's call goes
through one ``torch.compile`` of that code, and one compiled graph per input shape serves every layer:
the compile costs about one layer's. Embedding, rotary tables and final norm stay eager; the step's own
work around the forward compiles apart (:func:`medusa.model.generate.compiled_tree_step`).

A layer's ``layer_idx``, which Hugging Face attention passes to the cache, is traced as a symbolic
integer (``torch.compiler.config.dynamic_sources``): as a constant it would pin each layer to a graph of
its own. The cache write is part of the layer's graph and indexes the shared buffer itself
(:meth:`MedusaKVCache.update <medusa.model.kv_cache.MedusaKVCache.update>`): inductor does such a write in
place, where a write into the layer's slice (a view at a traced offset) was copied back over the whole
buffer in every layer.

The layers are compiled only inside :func:`compiled_layers`, and only for the thread inside: prefill (one
shape per prompt length), any other use of the model and other threads stay eager, and a user's own
``module.compile()`` is left as it was. A model
whose compile fails once (no Triton for the GPU, a layer dynamo cannot trace) is not tried again in the
process (:func:`give_up`).
"""

import logging
import threading
import weakref
from contextlib import contextmanager
from functools import partial

import torch
from torch import nn

logger = logging.getLogger(__name__)

# Sources of the per-layer index as dynamo names them when a decoder layer's call is compiled.
LAYER_INDEX_SOURCES = ("L['self']._modules['self_attn'].layer_idx", "L['self'].layer_idx")
# Compiled graphs per code object: about one per tree, batch size and span (torch's default limit is 8).
COMPILE_VARIANTS = 64

_compiled: "weakref.WeakKeyDictionary[nn.Module, dict]" = weakref.WeakKeyDictionary()  # layer -> {backend: call}
_failed: "weakref.WeakSet[nn.Module]" = weakref.WeakSet()  # models whose compile failed
# Layers carrying this module's dispatch -> threads inside compiled_layers for them. The dispatch runs the
# compiled call only for a thread inside (``_local.backend``): the background compiler's worker compiles a
# step while the decode loop's thread runs the same layers uncompiled.
_installed: "weakref.WeakKeyDictionary[nn.Module, int]" = weakref.WeakKeyDictionary()
_installed_lock = threading.Lock()
_local = threading.local()


def decoder_layers(model: nn.Module) -> list[nn.Module]:
    """The repeated blocks of a Hugging Face model: modules of the classes in its ``_no_split_modules``."""
    names = set(getattr(model, "_no_split_modules", None) or ())
    return [m for m in model.modules() if type(m).__name__ in names]


def _layer_call(layer: nn.Module, backend: str):
    """``layer``'s compiled call, made once per layer (all share dynamo's cache of compiled graphs)."""
    calls = _compiled.setdefault(layer, {})
    if backend not in calls:
        calls[backend] = torch.compile(layer._call_impl, backend=backend, dynamic=False)
    return calls[backend]


def _dispatch(layer_ref: "weakref.ref[nn.Module]", *args, **kwargs):
    """A layer's call: compiled for a thread inside :func:`compiled_layers`, else as usual."""
    layer, backend = layer_ref(), getattr(_local, "backend", None)
    return layer._call_impl(*args, **kwargs) if backend is None else _layer_call(layer, backend)(*args, **kwargs)


@contextmanager
def compiled_layers(model: nn.Module, backend: str = "inductor"):
    """Inside, in this thread, every decoder layer of the HF model ``model`` runs through ``torch.compile`` (static
    shapes: one graph per input shape, shared by the layers). Layers a user compiled already keep their own compile.

    Raises ValueError for a model that names no repeated blocks (``_no_split_modules``)."""
    layers = decoder_layers(model)
    if not layers:
        raise ValueError(f"{type(model).__name__} names no decoder layer classes (_no_split_modules); "
                         "its layers cannot be compiled one by one.")
    _configure_dynamo()
    with _installed_lock:
        layers = [layer for layer in layers if layer._compiled_call_impl is None or layer in _installed]
        for layer in layers:
            if layer not in _installed:
                layer._compiled_call_impl = partial(_dispatch, weakref.ref(layer))
            _installed[layer] = _installed.get(layer, 0) + 1
    previous, _local.backend = getattr(_local, "backend", None), backend
    try:
        yield
    finally:
        _local.backend = previous
        with _installed_lock:
            for layer in layers:
                _installed[layer] -= 1
                if not _installed[layer]:
                    del _installed[layer]
                    layer._compiled_call_impl = None


def _configure_dynamo() -> None:
    """Process-wide, once: the layer index sources traced as symbolic integers, and ``recompile_limit`` at least
    ``COMPILE_VARIANTS``. Set for good, not patched around each step: a patch would be undone under another
    thread's trace (the background compiler's, :mod:`medusa.model.compile_warmup`)."""
    config = torch.compiler.config
    missing = [s for s in LAYER_INDEX_SOURCES if s not in config.dynamic_sources.split(",")]
    if missing:
        config.dynamic_sources = ",".join(s for s in (config.dynamic_sources, *missing) if s)
    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, COMPILE_VARIANTS)


def import_compiler() -> None:
    """Import inductor, which ``torch.compile`` loads on a first compile: seconds a first step need not wait for."""
    import torch._inductor.compile_fx  # noqa: F401


def compilable(model: nn.Module) -> bool:
    """Whether ``model`` names its decoder layers and no compile of them has failed in this process."""
    return model not in _failed and bool(decoder_layers(model))


def give_up(model: nn.Module, error: Exception) -> None:
    """Record that compiling ``model``'s layers failed with ``error`` (logged once): it runs uncompiled from now on."""
    _failed.add(model)
    logger.warning("Compiling the decoder layers of %s failed; decoding runs uncompiled. %s: %s",
                   type(model).__name__, type(error).__name__, str(error).splitlines()[0] if str(error) else "")
