"""Export Medusa heads in the layout each serving engine loads as is.

    python -m medusa.export --model DIR --format {fasterdecoding,tgi,vllm,trtllm} --output DIR [--base-model DIR]
                            [--overwrite]

``--model`` is anything :meth:`medusa.model.MedusaModel.from_pretrained` reads (ours, FasterDecoding
heads-only ``.pt``/``.safetensors``, FasterDecoding full model, "version 2", Medusa-2). For Medusa-1 heads only
the head tensors are read; the base model is touched only to materialise per-head lm_heads for "version 2" heads, and then
only its lm_head tensor is read from its safetensors when the file layout allows it.

What each format writes:

- ``fasterdecoding``: ``config.json`` (``medusa_num_heads``, ``medusa_num_layers``,
  ``base_model_name_or_path``) and ``medusa_lm_head.pt``, the file FasterDecoding's
  ``MedusaModel.from_pretrained`` reads (``safetensors=True``: ``medusa_lm_head.safetensors`` instead).
  Keys ``{i}.{j}.linear.weight|bias``, ``{i}.{L}.weight``.
- ``tgi``: the same config (plus ``"version": "2"`` for shared-lm_head heads) and
  ``medusa_lm_head.safetensors``. TGI reads per-head lm_heads when every ``{i}.{L}.weight`` is
  present, else falls back to its "version 2" loader, which needs ``medusa_num_layers == 1``.
- ``vllm``: ``config.json`` with ``model_type: medusa``, ``architectures: [MedusaModel]``,
  ``num_heads``, ``num_hidden_layers``, ``hidden_size``, ``vocab_size``, ``truncated_vocab_size``,
  ``medusa_fc_bias: true`` (without it vLLM builds the ResBlocks without bias and drops ours
  silently) and ``model.safetensors`` with keys ``blocks.{i}.layers.{j}.weight|bias`` and
  ``lm_heads.{i}.weight``. "Version 2" heads set ``original_lm_head: true`` and store the base lm_head
  once, as ``lm_heads.0.weight``.
- ``trtllm``: ``medusa_lm_head.safetensors`` with heads-only keys (biases included), the FasterDecoding
  config plus ``num_medusa_heads`` (the name TensorRT-LLM's Python API reads), and a ``README.md``
  with the ``convert_checkpoint.py`` / ``trtllm-build`` commands.

Engines that need an lm_head per head (FasterDecoding, TensorRT-LLM, TGI with more than one layer per
head) get "version 2" heads with the base lm_head copied into every head, and the export says so.
Every export carries ``base_model_name_or_path``.

A Medusa-2 checkpoint (heads + the backbone's LoRA adapter in ``adapter/``) had its heads trained on the
fine-tuned backbone, so the engine must serve that backbone, not the base: the export merges the adapter
into the base model (``--base-model``, else the one the config names) in the base's own dtype and writes

- ``vllm``, ``tgi``, ``trtllm``: ``backbone/`` (the merged model, ``save_pretrained`` with its tokenizer: a
  plain Hugging Face model) and ``heads/`` (the format above, its ``base_model_name_or_path`` the absolute
  path of ``backbone/``). vLLM serves ``backbone/`` with ``heads/`` as the speculative model; TGI serves
  ``heads/`` and loads the base it names; TensorRT-LLM converts ``--model_dir backbone/ --medusa_model_dir heads/``.
- ``fasterdecoding``: one full model, the layout FasterDecoding's ``MedusaModel.from_pretrained`` reads when
  ``config.json`` has a ``model_type``: the merged weights plus ``medusa_head.{i}.{j}.linear.*`` /
  ``medusa_head.{i}.{L}.weight`` (an lm_head per head), ``medusa_num_heads`` and ``medusa_num_layers`` in
  the config, and the tokenizer. Its ``MedusaModel`` serves Llama and Mistral models only; others are refused.
"""

import argparse
import json
import logging
import os
import re
import shutil
import sys
import warnings
from dataclasses import dataclass

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedModel

from . import demo
from .model import MedusaModel, checkpoint
from .model.checkpoint import CheckpointError
from .model.config import MedusaConfig
from .model.heads import MedusaHeads
from .model.lora import is_adapter
from .model.medusa_choices import resolve_medusa_choices

logger = logging.getLogger(__name__)

_RESBLOCK_WEIGHT = re.compile(r"^\d+\.\d+\.linear\.weight$")
BACKBONE_DIR = "backbone"  # Medusa-2 exports: the merged backbone, a plain Hugging Face model with its tokenizer
HEADS_DIR = "heads"  # Medusa-2 exports: the heads in the engine's layout, naming BACKBONE_DIR as their base
VLLM_VERSIONS = "0.9.0 to 0.32.0"  # the releases whose V1 engine serves Medusa (0.33.0 removed it; docs/serving.md)
FASTERDECODING_MODEL_TYPES = ("llama", "mistral")  # the architectures FasterDecoding's MedusaModel dispatches to


@dataclass
class HeadsCheckpoint:
    """Medusa heads read from disk without their base model.

    Attributes:
        config: the resolved head configuration (hidden and vocabulary sizes from the weights;
            ``vocab_size`` is None for "version 2" heads, which hold no vocabulary-sized tensor).
        state_dict: head tensors with heads-only key names ``{i}.{j}.linear.*`` / ``{i}.{L}.weight``.
    """

    config: MedusaConfig
    state_dict: dict[str, torch.Tensor]


def _sizes_from_weights(raw: dict, state_dict: dict[str, torch.Tensor]) -> tuple[int, int | None]:
    """(hidden_size, vocab_size) read off the tensors: ResBlock weights ``[d, d]``, lm_heads ``[V, d]``."""
    layers = raw.get("medusa_num_layers", 1)
    lm_head = state_dict.get(f"0.{layers}.weight")
    resblock = next((v for k, v in state_dict.items() if _RESBLOCK_WEIGHT.match(k)), None)
    if lm_head is not None:
        return lm_head.shape[1], lm_head.shape[0]
    if resblock is not None:
        return resblock.shape[0], raw.get("vocab_size")
    raise CheckpointError(f"Found neither ResBlock weights nor an lm_head '0.{layers}.weight' among the head tensors.")


def load_heads_checkpoint(path: str, base_model: str | None = None) -> HeadsCheckpoint:
    """Read and validate the heads at ``path`` (any layout ``MedusaModel.from_pretrained`` reads).

    Args:
        base_model: overrides the config's ``base_model_name_or_path`` (a FasterDecoding full model
            names itself).

    Raises:
        CheckpointError: no config or heads, or heads that do not match their config (names the keys).
    """
    raw = checkpoint.read_config(path)
    state_dict = checkpoint.read_heads_state_dict(path)
    hidden_size, vocab_size = _sizes_from_weights(raw, state_dict)
    config = checkpoint.resolve_config(raw, state_dict, hidden_size, vocab_size)
    if base_model is not None:
        config.base_model_name_or_path = base_model
    elif config.base_model_name_or_path is None and checkpoint.is_full_model(path):
        config.base_model_name_or_path = path
    with torch.device("meta"):  # checks key names and shapes without allocating the heads
        heads = MedusaHeads(config.medusa_num_heads, config.medusa_num_layers, hidden_size, vocab_size or 1,
                            config.shared_lm_head)
    with warnings.catch_warnings():  # copying into meta parameters is the intended no-op
        warnings.filterwarnings("ignore", message=".*copying from a non-meta parameter")
        checkpoint.load_heads_strict(heads, state_dict)
    return HeadsCheckpoint(config, state_dict)


def base_lm_head_weight(base_model: str | PreTrainedModel) -> torch.Tensor:
    """The base model's output embedding ``[V, d]``, from a loaded model or a local model directory.

    From a directory it reads only that tensor from the model's safetensors (tied embeddings included,
    found by the parameter names the architecture gives it); loads the whole model only when that fails.
    """
    if isinstance(base_model, PreTrainedModel):
        return base_model.get_output_embeddings().weight.detach()
    if not base_model or not os.path.isdir(base_model):
        raise CheckpointError(
            f"Materialising per-head lm_heads needs the base model's lm_head, but the base model {base_model!r} is "
            "not a local directory: pass --base-model DIR."
        )
    with torch.device("meta"):
        skeleton = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(base_model))
    target = skeleton.get_output_embeddings().weight
    names = [name for name, param in skeleton.named_parameters(remove_duplicate=False) if param is target]
    index_file = os.path.join(base_model, "model.safetensors.index.json")
    if os.path.isfile(index_file):
        with open(index_file) as f:
            weight_map = json.load(f)["weight_map"]
    elif os.path.isfile(os.path.join(base_model, "model.safetensors")):
        with safe_open(os.path.join(base_model, "model.safetensors"), framework="pt") as f:
            weight_map = dict.fromkeys(f.keys(), "model.safetensors")
    else:
        weight_map = {}
    for name in names:
        if name in weight_map:
            with safe_open(os.path.join(base_model, weight_map[name]), framework="pt") as f:
                return f.get_tensor(name)
    logger.info("No %s tensor in %s's safetensors: loading the whole model for its lm_head.", names, base_model)
    return AutoModelForCausalLM.from_pretrained(base_model).get_output_embeddings().weight.detach()


def _with_own_lm_heads(heads: HeadsCheckpoint, base_model: str | PreTrainedModel | None, engine: str, why: str,
                       notes: list[str]) -> dict[str, torch.Tensor]:
    """Heads-only state dict with an lm_head per head; "version 2" heads get copies of the base lm_head."""
    if not heads.config.shared_lm_head:
        return dict(heads.state_dict)
    try:
        lm_head = base_lm_head_weight(base_model or heads.config.base_model_name_or_path)
    except CheckpointError as e:
        raise CheckpointError(f"{engine} {why}, so the shared lm_head must be copied into each head. {e}") from None
    layers = heads.config.medusa_num_layers
    state = dict(heads.state_dict)
    for i in range(heads.config.medusa_num_heads):
        # safetensors refuses tensors that share memory, hence a copy per head.
        state[f"{i}.{layers}.weight"] = lm_head.to(heads.state_dict[f"{i}.0.linear.weight"].dtype).clone()
    notes.append(
        f"'version 2' heads (shared lm_head): {engine} {why}, so the base model's lm_head was materialised as "
        f"{heads.config.medusa_num_heads} per-head copies (the export is larger, the outputs are identical)."
    )
    return state


def _fasterdecoding_config(heads: HeadsCheckpoint, version_2: bool = False) -> dict:
    config = {
        "medusa_num_heads": heads.config.medusa_num_heads,
        "medusa_num_layers": heads.config.medusa_num_layers,
        "base_model_name_or_path": heads.config.base_model_name_or_path,
    }
    return config | {"version": "2"} if version_2 else config


def _write_json(path: str, data: dict) -> None:
    with open(path, "w") as f:
        json.dump(data, f, indent=2)
        f.write("\n")


def _save_safetensors(state: dict[str, torch.Tensor], path: str) -> None:
    save_file({k: v.detach().contiguous() for k, v in state.items()}, path, metadata={"format": "pt"})


def export_fasterdecoding(heads: HeadsCheckpoint, output: str, base_model: str | None = None,
                          safetensors: bool = False) -> list[str]:
    """FasterDecoding heads-only: ``config.json`` + ``medusa_lm_head.pt`` (or ``.safetensors``). Returns notes."""
    notes = []
    state = _with_own_lm_heads(heads, base_model, "FasterDecoding", "has no 'version 2' heads", notes)
    os.makedirs(output, exist_ok=True)
    _write_json(os.path.join(output, "config.json"), _fasterdecoding_config(heads))
    if safetensors:
        _save_safetensors(state, os.path.join(output, checkpoint.HEADS_SAFETENSORS))
    else:
        torch.save({k: v.contiguous() for k, v in state.items()}, os.path.join(output, checkpoint.HEADS_PT))
    return notes + _fasterdecoding_tied_layers(heads)


def _fasterdecoding_tied_layers(heads: HeadsCheckpoint) -> list[str]:
    if heads.config.medusa_num_layers == 1:
        return []
    return ["FasterDecoding's MedusaModel repeats one ResBlock instance per head (tied layers), so it cannot hold "
            f"{heads.config.medusa_num_layers} independent layers per head: use this library, TGI or vLLM instead."]


def export_fasterdecoding_full_model(heads: HeadsCheckpoint, backbone: PreTrainedModel, tokenizer,
                                     output: str) -> list[str]:
    """FasterDecoding full model: ``backbone``'s weights with ``medusa_head.*`` keys, the head counts in its
    ``config.json``, and the tokenizer (FasterDecoding loads it from the model's own folder). Returns notes."""
    notes = []
    state = _with_own_lm_heads(heads, backbone, "FasterDecoding", "has no 'version 2' heads", notes)
    backbone.config.medusa_num_heads = heads.config.medusa_num_heads
    backbone.config.medusa_num_layers = heads.config.medusa_num_layers
    weights = backbone.state_dict() | {checkpoint.FULL_MODEL_PREFIX + k: v for k, v in state.items()}
    backbone.save_pretrained(output, state_dict=weights)  # tied embeddings are stored once, as save_pretrained does
    tokenizer.save_pretrained(output)
    return notes + _fasterdecoding_tied_layers(heads)


def export_tgi(heads: HeadsCheckpoint, output: str, base_model: str | None = None) -> list[str]:
    """TGI: ``config.json`` + ``medusa_lm_head.safetensors``. Returns notes."""
    notes = []
    version_2 = heads.config.shared_lm_head and heads.config.medusa_num_layers == 1
    if version_2:
        state = dict(heads.state_dict)
    else:
        state = _with_own_lm_heads(
            heads, base_model, "TGI", f"reads shared-lm_head heads only with medusa_num_layers == 1 (these have "
            f"{heads.config.medusa_num_layers})", notes)
    os.makedirs(output, exist_ok=True)
    _write_json(os.path.join(output, "config.json"), _fasterdecoding_config(heads, version_2))
    _save_safetensors(state, os.path.join(output, checkpoint.HEADS_SAFETENSORS))
    return notes


def export_vllm(heads: HeadsCheckpoint, output: str, base_model: str | None = None) -> list[str]:
    """vLLM: ``config.json`` (model_type medusa) + ``model.safetensors`` with vLLM's key names. Returns notes."""
    config, layers = heads.config, heads.config.medusa_num_layers
    state = {}
    for i in range(config.medusa_num_heads):
        for j in range(layers):
            state[f"blocks.{i}.layers.{j}.weight"] = heads.state_dict[f"{i}.{j}.linear.weight"]
            state[f"blocks.{i}.layers.{j}.bias"] = heads.state_dict[f"{i}.{j}.linear.bias"]
        if not config.shared_lm_head:
            state[f"lm_heads.{i}.weight"] = heads.state_dict[f"{i}.{layers}.weight"]
    notes = []
    if config.shared_lm_head:
        lm_head = base_lm_head_weight(base_model or config.base_model_name_or_path)
        state["lm_heads.0.weight"] = lm_head.to(heads.state_dict["0.0.linear.weight"].dtype)
        notes.append("'version 2' heads (shared lm_head): the base model's lm_head is stored once as "
                     "lm_heads.0.weight with original_lm_head: true, which vLLM shares across heads.")
    vocab_size = state["lm_heads.0.weight"].shape[0]
    vllm_config = {
        "model_type": checkpoint.VLLM_MODEL_TYPE,
        "architectures": ["MedusaModel"],
        "num_heads": config.medusa_num_heads,
        "num_hidden_layers": layers,
        "hidden_size": config.hidden_size,
        "vocab_size": vocab_size,
        "truncated_vocab_size": vocab_size,
        "medusa_fc_bias": True,
        "original_lm_head": config.shared_lm_head,
        "base_model_name_or_path": config.base_model_name_or_path,
    }
    os.makedirs(output, exist_ok=True)
    _write_json(os.path.join(output, "config.json"), vllm_config)
    _save_safetensors(state, os.path.join(output, checkpoint.VLLM_WEIGHTS))
    return notes


TRTLLM_README = """\
# Medusa heads for TensorRT-LLM

Exported by medusa-llm: {num_heads} heads, {num_layers} ResBlock layer(s) per head, base model `{base}`.
`medusa_lm_head.safetensors` holds the heads-only keys (`{{i}}.{{j}}.linear.weight|bias`, `{{i}}.{num_layers}.weight`)
that `examples/medusa/convert_checkpoint.py` reads. Build and run (from TensorRT-LLM's `examples/medusa`):

```bash
python convert_checkpoint.py --model_dir {base} \\
    --medusa_model_dir {output} \\
    --output_dir ./tllm_checkpoint_medusa --dtype float16 \\
    --num_medusa_heads {num_heads} --num_medusa_layers {num_layers}
trtllm-build --checkpoint_dir ./tllm_checkpoint_medusa --output_dir ./medusa_engine \\
    --gemm_plugin float16 --speculative_decoding_mode medusa --max_batch_size 4
python ../run.py --engine_dir ./medusa_engine --tokenizer_dir {base} --max_output_len 256 \\
    --medusa_choices "{choices}"
```

`--medusa_choices` is the tree; no path may be longer than {num_heads} (shown: medusa-llm's default
preset `mc_sim_7b_63` cut to {num_heads} heads; `medusa.model.presets()` lists the others).
"""


def export_trtllm(heads: HeadsCheckpoint, output: str, base_model: str | None = None) -> list[str]:
    """TensorRT-LLM: ``medusa_lm_head.safetensors`` (biases, per-head lm_heads), config and build README."""
    notes = []
    state = _with_own_lm_heads(heads, base_model, "TensorRT-LLM", "reads an lm_head per head", notes)
    os.makedirs(output, exist_ok=True)
    # TensorRT-LLM's MedusaConfig.from_hugging_face reads the head count as num_medusa_heads (the layers as
    # medusa_num_layers); without it the LLM API has no head count.
    config = _fasterdecoding_config(heads) | {"num_medusa_heads": heads.config.medusa_num_heads}
    _write_json(os.path.join(output, "config.json"), config)
    _save_safetensors(state, os.path.join(output, checkpoint.HEADS_SAFETENSORS))
    choices = resolve_medusa_choices(None, heads.config.medusa_num_heads)
    readme = TRTLLM_README.format(num_heads=heads.config.medusa_num_heads, num_layers=heads.config.medusa_num_layers,
                                  base=heads.config.base_model_name_or_path or "BASE_MODEL_DIR",
                                  output=os.path.abspath(output), choices=json.dumps(choices).replace(" ", ""))
    with open(os.path.join(output, "README.md"), "w") as f:
        f.write(readme)
    notes.append(f"Build commands for TensorRT-LLM: {os.path.join(output, 'README.md')}")
    return notes


FORMATS = {
    "fasterdecoding": export_fasterdecoding,
    "tgi": export_tgi,
    "vllm": export_vllm,
    "trtllm": export_trtllm,
}


def _prepare_output(model: str, output: str, overwrite: bool) -> None:
    """Make sure ``output`` holds nothing but the export: refuse a non-empty folder unless ``overwrite``, which
    empties it (files left from another format would be served beside the new ones)."""
    model_path, output_path = os.path.realpath(model), os.path.realpath(output)
    if os.path.commonpath([model_path, output_path]) == output_path:
        raise ValueError(f"--output {output} is --model or contains it: the export would overwrite the checkpoint it reads.")
    if os.path.exists(output) and not os.path.isdir(output):
        raise ValueError(f"--output {output} is a file, not a directory.")
    if not os.path.isdir(output) or not os.listdir(output):
        return
    if not overwrite:
        raise ValueError(f"--output {output} is not empty: choose a new directory, or pass --overwrite to replace "
                         "its contents.")
    shutil.rmtree(output)


def export(model: str, engine: str, output: str, base_model: str | None = None, overwrite: bool = False,
           **options) -> list[str]:
    """Read the heads at ``model`` and write them to ``output`` for ``engine``; returns notes for the user.

    A Medusa-2 checkpoint goes to :func:`export_medusa2`. ``output`` must be empty or absent; with
    ``overwrite`` a non-empty one is emptied first (after the checkpoint was read and checked).
    """
    if engine not in FORMATS:
        raise ValueError(f"Unknown export format {engine!r}: choose one of {', '.join(FORMATS)}.")
    if is_adapter(os.path.join(model, checkpoint.ADAPTER_DIR)):
        return export_medusa2(model, engine, output, base_model, overwrite, **options)
    heads = load_heads_checkpoint(model, base_model)
    _prepare_output(model, output, overwrite)
    return FORMATS[engine](heads, output, base_model, **options)


def export_medusa2(model: str, engine: str, output: str, base_model: str | None = None, overwrite: bool = False,
                   **options) -> list[str]:
    """A Medusa-2 checkpoint for ``engine``: the backbone with its LoRA adapter merged, beside the heads.

    ``base_model`` is the model the adapter is merged into (default: the one the config names; the demo's
    symbolic name is the demo base). The merged weights keep the base's dtype (``dtype="auto"``), so the
    sum is rounded once. FasterDecoding gets one full model; the others ``backbone/`` + ``heads/`` (see the
    module docstring). Returns notes for the user.

    Raises:
        CheckpointError: a bad checkpoint or adapter, or a backbone FasterDecoding cannot serve.
    """
    heads = load_heads_checkpoint(model)
    base_model = base_model or demo.base_model_for(model) or heads.config.base_model_name_or_path
    if engine == "fasterdecoding" and base_model and os.path.isdir(base_model):  # refused before loading it
        model_type = AutoConfig.from_pretrained(base_model).model_type
        if model_type not in FASTERDECODING_MODEL_TYPES:
            raise CheckpointError(f"FasterDecoding's MedusaModel serves {' and '.join(FASTERDECODING_MODEL_TYPES)} "
                                  f"models only, and this backbone is {model_type}: export it for vllm, tgi or "
                                  "trtllm instead.")
    merged = MedusaModel.from_pretrained(model, base_model=base_model, dtype="auto")
    backbone, tokenizer = merged.base_model, merged.get_tokenizer()
    _prepare_output(model, output, overwrite)
    merged_note = (f"Medusa-2: the LoRA adapter of {model} was merged into {backbone.name_or_path}; the heads were "
                   "trained on that fine-tuned backbone, so serve it, not the original base.")
    if engine == "fasterdecoding":  # one folder, in safetensors whatever --safetensors says
        return [merged_note, *export_fasterdecoding_full_model(heads, backbone, tokenizer, output)]
    backbone_dir = os.path.abspath(os.path.join(output, BACKBONE_DIR))
    backbone.save_pretrained(backbone_dir)
    tokenizer.save_pretrained(backbone_dir)
    heads.config.base_model_name_or_path = backbone_dir
    notes = FORMATS[engine](heads, os.path.join(output, HEADS_DIR), backbone_dir, **options)
    return [f"{merged_note} The merged backbone is {backbone_dir} (a plain Hugging Face model with its tokenizer), "
            f"the heads {os.path.join(output, HEADS_DIR)}, naming it as their base.", *notes]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m medusa.export", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="Medusa heads directory (any layout medusa-llm reads) or "
                                                       "Medusa-2 checkpoint (heads + adapter/).")
    parser.add_argument("--format", required=True, help=f"Target engine: {', '.join(FORMATS)}.")
    parser.add_argument("--output", required=True, help="Directory to write the export to (new or empty).")
    parser.add_argument("--overwrite", action="store_true", help="Empty a non-empty --output first.")
    parser.add_argument("--base-model", default=None,
                        help="Base model directory: overrides base_model_name_or_path in the export, and is where "
                             "the lm_head of 'version 2' heads is read from when it must be materialised. For a "
                             "Medusa-2 checkpoint: the base its LoRA adapter is merged into.")
    parser.add_argument("--safetensors", action="store_true",
                        help="fasterdecoding only: write medusa_lm_head.safetensors instead of medusa_lm_head.pt "
                             "(a Medusa-2 export is a full model in safetensors either way).")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    options = {"safetensors": True} if args.safetensors else {}
    if args.safetensors and args.format != "fasterdecoding":
        print("error: --safetensors applies to --format fasterdecoding only.", file=sys.stderr)
        return 2
    try:
        notes = export(args.model, args.format, args.output, args.base_model, args.overwrite, **options)
    except (CheckpointError, demo.DemoError, ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    for note in notes:
        print(f"note: {note}")
    print(f"Exported {args.model} for {args.format} to {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
