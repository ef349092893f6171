"""MedusaModel: Medusa heads on a stock Hugging Face causal LM."""

import inspect
import os

import torch
from torch import nn
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel

from . import checkpoint
from .adaptive import LevelHistory
from .cache_pool import CachePool
from .config import MedusaConfig
from .generate import DecodeSetup, medusa_generate
from .heads import MedusaHeads
from .kv_cache import MedusaKVCache
from .lora import LoraAdapter, is_adapter
from .medusa_choices import resolve_medusa_choices
from .tree import TreeBuffers
from .tree_policy import POLICY_FILES, TreePolicy


CPU_TREE_FILE = "cpu_tree.json"
TREE_FILE = "tree.json"


def default_dtype(device_map) -> torch.dtype | str:
    """The base model's dtype when none is asked for: float32 on CPU (fp16 matmuls there are slow or
    missing), elsewhere the checkpoint's own (``"auto"``).

    ``device_map`` is ``from_pretrained``'s: a device, ``"auto"`` (CUDA when available) or a module map.
    """
    if device_map == "auto":
        device_map = "cuda" if torch.cuda.is_available() else "cpu"
    on_cpu = isinstance(device_map, (str, torch.device)) and torch.device(device_map).type == "cpu"
    return torch.float32 if on_cpu else "auto"


def shipped_tree(heads_dir: str, device: torch.device) -> str | None:
    """A tree shipped beside the heads: ``cpu_tree.json`` on CPU (big trees cost more than they save
    there), ``tree.json`` elsewhere; None when the directory has none."""
    for name in ((CPU_TREE_FILE,) if device.type == "cpu" else ()) + (TREE_FILE,):
        if os.path.isfile(os.path.join(heads_dir, name)):
            return os.path.join(heads_dir, name)
    return None


class MedusaModel(nn.Module):
    """A frozen base ``AutoModelForCausalLM`` plus Medusa heads.

    The base model must be decoder-only and accept a 4D float attention mask and explicit
    ``position_ids`` (stock Llama, Mistral, Qwen2, Gemma and most others do).

    Args:
        base_model: the causal LM.
        config: head configuration; hidden and vocabulary sizes are taken from ``base_model``.
            Fresh heads are identity ResBlocks with (own-lm_head heads) a copy of the base lm_head.
    """

    def __init__(self, base_model: PreTrainedModel, config: MedusaConfig | None = None):
        super().__init__()
        text_config = base_model.config.get_text_config()
        config = config or MedusaConfig()
        config.hidden_size = text_config.hidden_size
        config.vocab_size = base_model.get_output_embeddings().weight.shape[0]
        if config.base_model_name_or_path is None:
            config.base_model_name_or_path = getattr(base_model.config, "_name_or_path", None) or None
        self.config = config
        self.base_model = base_model
        lm_head = base_model.get_output_embeddings()
        self.medusa_head = MedusaHeads(
            config.medusa_num_heads, config.medusa_num_layers, config.hidden_size, config.vocab_size, config.shared_lm_head
        ).to(dtype=lm_head.weight.dtype, device=lm_head.weight.device)
        self.medusa_head.init_from_lm_head(lm_head)
        self.tokenizer = None
        self.adapter: LoraAdapter | None = None  # Medusa-2: merged into base_model; kept to be saved again
        self._cache_kwarg = "cache" if "cache" in inspect.signature(self.decoder.forward).parameters else "past_key_values"
        self._softcap = getattr(text_config, "final_logit_softcapping", None)
        self.cache_pool = CachePool(base_model, self.context_length)  # caches, graphs and trees kept between calls
        self.tree_policy = None
        self.level_history = LevelHistory()  # per process, for trees that follow acceptance
        self.default_medusa_choices = None  # the tree used when generation names none and there is no policy

    # ----------------------------------------------------------------------------- loading / saving
    @classmethod
    def from_pretrained(cls, path: str, base_model: str | PreTrainedModel | None = None, **hf_kwargs) -> "MedusaModel":
        """Load heads from ``path`` in any layout of docs/design.md (Heads and checkpoint layouts), on the base model they name.

        Args:
            path: a heads-only directory (ours, FasterDecoding ``medusa_lm_head.pt|.safetensors``,
                "version 2"), a FasterDecoding full-model directory (``medusa_head.*`` keys), or a Medusa-2
                checkpoint: heads plus the backbone's LoRA adapter in ``adapter/`` (peft's layout), which is
                merged into the base model's weights at load.
            base_model: overrides the config's ``base_model_name_or_path``: a path or a loaded model (a
                Medusa-2 adapter is merged into a loaded model in place).
            hf_kwargs: passed to ``AutoModelForCausalLM.from_pretrained`` for the base (``dtype``,
                ``device_map``, ``quantization_config``, ...).

        With ``heads_accuracy.json`` and ``verify_cost.json`` beside the heads, ``model.tree_policy`` is
        set from them: generation without ``medusa_choices`` then picks the tree for each batch size
        (docs/trees.md). The cost curve is that of the GPU it was measured on, so on CPU a shipped
        ``cpu_tree.json`` replaces the policy; a shipped tree (:func:`shipped_tree`) also serves where there
        is no policy. It becomes ``model.default_medusa_choices``.

        Raises:
            checkpoint.CheckpointError: no heads, heads that do not match (names the keys), or policy
                files that are malformed or measure another number of heads.
        """
        raw = checkpoint.read_config(path)
        state_dict = checkpoint.read_heads_state_dict(path)
        adapter_dir = os.path.join(path, checkpoint.ADAPTER_DIR)
        adapter = LoraAdapter.load(adapter_dir) if is_adapter(adapter_dir) else None
        if base_model is None:
            base_model = path if checkpoint.is_full_model(path) else raw.get("base_model_name_or_path")
            if not base_model:
                raise checkpoint.CheckpointError(f"{path}/config.json names no base_model_name_or_path; pass base_model=.")
        if isinstance(base_model, str):
            if not os.path.isdir(base_model):
                raise checkpoint.CheckpointError(f"Base model directory {base_model!r} does not exist.")
            base_model = AutoModelForCausalLM.from_pretrained(base_model, **hf_kwargs)
        base_model.requires_grad_(False)
        if adapter is not None:
            adapter.merge_into(base_model)
        text_config = base_model.config.get_text_config()
        vocab_size = base_model.get_output_embeddings().weight.shape[0]
        config = checkpoint.resolve_config(raw, state_dict, text_config.hidden_size, vocab_size)
        model = cls(base_model, config)
        checkpoint.load_heads_strict(model.medusa_head, state_dict)
        model.adapter = adapter
        accuracy, cost = (os.path.join(path, name) for name in POLICY_FILES)
        if os.path.isfile(accuracy) and os.path.isfile(cost):
            try:
                model.tree_policy = TreePolicy.load(accuracy, cost)
            except ValueError as e:
                raise checkpoint.CheckpointError(str(e)) from None
            if model.tree_policy.accuracies.shape[0] != config.medusa_num_heads:
                raise checkpoint.CheckpointError(
                    f"{accuracy} measures {model.tree_policy.accuracies.shape[0]} heads; the checkpoint has "
                    f"{config.medusa_num_heads}.")
        device = model.lm_head.weight.device
        tree = shipped_tree(path, device)
        if tree is not None and (model.tree_policy is None or device.type == "cpu"):
            model.default_medusa_choices, model.tree_policy = tree, None
        return model

    def save_pretrained(self, path: str) -> None:
        """Write ``config.json`` + ``medusa_lm_head.safetensors`` (the heads-only layout; serving engines get
        :mod:`medusa.export`'s copies), a Medusa-2 model's LoRA adapter in ``adapter/``, and the tree
        policy's two files if the model has one."""
        checkpoint.save_heads(path, self.medusa_head, self.config)
        if self.adapter is not None:
            self.adapter.save(os.path.join(path, checkpoint.ADAPTER_DIR))
        if self.tree_policy is not None:
            self.tree_policy.save(*(os.path.join(path, name) for name in POLICY_FILES))

    def get_tokenizer(self):
        """The base model's tokenizer, loaded on first use from where the base model was loaded (a
        ``base_model=`` override included), else from ``base_model_name_or_path``."""
        if self.tokenizer is None:
            self.tokenizer = AutoTokenizer.from_pretrained(self.base_model.name_or_path or
                                                           self.config.base_model_name_or_path)
        return self.tokenizer

    # ----------------------------------------------------------------------------- forward
    @property
    def decoder(self) -> nn.Module:
        """The base model's backbone (embeddings, layers, final norm), without its lm_head."""
        return self.base_model.base_model

    @property
    def lm_head(self) -> nn.Module:
        return self.base_model.get_output_embeddings()

    def hidden_states(self, input_ids: torch.Tensor, attention_mask=None, position_ids=None,
                      cache: MedusaKVCache | None = None) -> torch.Tensor:
        """Last hidden states ``[batch, seq, d]`` of the base model (after its final norm)."""
        out = self.decoder(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                           use_cache=cache is not None, **{self._cache_kwarg: cache})
        return out.last_hidden_state

    @property
    def context_length(self) -> int | None:
        """The base model's context in tokens (``max_position_embeddings``); None where its config names none."""
        return getattr(self.base_model.config.get_text_config(), "max_position_embeddings", None)

    def _apply(self, fn, recurse=True):
        """Moves and casts (``.to()``, ``.cuda()``, ``.half()``) also renew the pool of caches, CUDA graphs and tree
        buffers, which hold the old device, dtype and addresses."""
        super()._apply(fn, recurse)
        self.cache_pool = CachePool(self.base_model, self.context_length)
        return self

    def lm_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Base logits ``[..., V]`` from hidden states ``[..., d]`` (with the model's logit soft-capping)."""
        logits = self.lm_head(hidden)
        if self._softcap:
            logits = torch.tanh(logits / self._softcap) * self._softcap
        return logits

    def head_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Medusa logits ``[heads, ..., V]`` from hidden states ``[..., d]``."""
        return self.medusa_head(hidden, self.lm_head)

    def forward(self, input_ids: torch.Tensor, attention_mask=None, past_key_values=None, position_ids=None,
                output_orig: bool = False):
        """Head logits ``[heads, batch, seq, V]``; with ``output_orig`` also the base logits ``[batch, seq, V]``."""
        hidden = self.hidden_states(input_ids, attention_mask, position_ids, past_key_values)
        medusa_logits = self.head_logits(hidden)
        return (medusa_logits, self.lm_logits(hidden)) if output_orig else medusa_logits

    # ----------------------------------------------------------------------------- generation
    def tree_buffers(self, medusa_choices=None, copy_chains: int = 0, copy_depth: int = 0) -> TreeBuffers:
        """Buffers for a tree of head paths (preset name, JSON, file or list; None = ``default_medusa_choices``,
        else the default preset; "none" = no head nodes) with ``copy_chains`` copy branches of ``copy_depth``
        tokens (prompt lookup)."""
        medusa_choices = self.default_medusa_choices if medusa_choices is None else medusa_choices
        tree = [] if medusa_choices == "none" else resolve_medusa_choices(medusa_choices, self.config.medusa_num_heads)
        return self.cache_pool.tree_buffers(tree, copy_chains, copy_depth)

    def decode_setup(self) -> DecodeSetup:
        """What the decode loop uses of this model, as it stands now (policy, tokenizer and step times may be replaced)."""
        return DecodeSetup(self, self.tree_buffers, self.tree_policy, self.cache_pool, self.level_history, self.tokenizer,
                           self.context_length)

    def medusa_generate(self, input_ids: torch.Tensor, **kwargs):
        """Streaming Medusa generation; see :func:`medusa.model.generate.medusa_generate`."""
        return medusa_generate(self.decode_setup(), input_ids, **kwargs)

    def generate(self, prompts, **kwargs) -> list[list[int]]:
        """Decode a batch without streaming: the new token ids of each prompt (a list of 1-D id sequences or ``[batch, len]``).

        Takes :func:`~medusa.model.generate.medusa_generate`'s keyword arguments (``batch_size`` for
        continuous batching of many prompts).
        """
        outputs = [[] for _ in prompts]
        for rows in self.medusa_generate(list(prompts), **kwargs):
            for output, row in zip(outputs, rows):
                if row is not None:
                    output += row["new_token_ids"]
        return outputs

    def greedy_generate(self, input_ids: torch.Tensor, **kwargs):
        """Plain greedy decoding, one token per step, on the same cache and graph machinery (the baseline)."""
        return self.medusa_generate(input_ids, medusa_choices="none", copy_chains=0, **kwargs)
