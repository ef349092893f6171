"""Exports for serving engines, reloaded by independent readers written from each engine's key names.

The readers below follow what the engines document and do (vLLM ``models/medusa.py`` and its
``MedusaConfig``, TGI ``layers/medusa.py``, TensorRT-LLM ``examples/medusa/convert_checkpoint.py``,
FasterDecoding ``MedusaModel.from_pretrained``), including the forgiving parts: vLLM drops unknown keys,
TGI falls back to its "version 2" loader and FasterDecoding loads with ``strict=False``. Each reader
records the keys it consumed, so a test can assert that nothing was ignored and nothing left unset.
"""

import glob
import json
import os
import re
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from medusa import export
from medusa.model import CheckpointError, MedusaConfig, MedusaModel
from tests.tiny import tiny_model

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NUM_HEADS = 3


class Ledger:
    """A checkpoint's tensors; remembers which keys a reader took."""

    def __init__(self, tensors: dict[str, torch.Tensor]):
        self.tensors, self.used = tensors, set()

    def take(self, key: str) -> torch.Tensor:
        tensor = self.tensors[key]  # KeyError = the engine would fail (or fall back) here
        self.used.add(key)
        return tensor

    def unused(self) -> list[str]:
        return sorted(set(self.tensors) - self.used)


def run_heads(heads: list[tuple[list[tuple[torch.Tensor, torch.Tensor | None]], torch.Tensor]], hidden):
    """Logits ``[heads, ..., V]``: per head, x <- x + SiLU(W x + b) for each layer, then its lm_head."""
    out = []
    for layers, lm_head in heads:
        x = hidden
        for weight, bias in layers:
            x = x + F.silu(F.linear(x, weight, bias))
        out.append(F.linear(x, lm_head))
    return torch.stack(out)


def read_vllm(path: str):
    """vLLM's Medusa draft model: config renaming, parameters by name, unknown keys skipped."""
    with open(os.path.join(path, "config.json")) as f:
        cfg = json.load(f)
    assert cfg["model_type"] == "medusa" and cfg["architectures"] == ["MedusaModel"]
    for key in list(cfg):  # vLLM's MedusaConfig.from_pretrained renames *num*heads* / *num*layers*
        if "num" in key and "heads" in key:
            cfg["num_heads"] = cfg.pop(key)
        elif "num" in key and "layers" in key:
            cfg["num_hidden_layers"] = cfg.pop(key)
    d, vocab = cfg["hidden_size"], cfg.get("truncated_vocab_size") or cfg["vocab_size"]
    bias = cfg.get("medusa_fc_bias", False)
    params = {}
    for i in range(cfg["num_heads"]):
        for j in range(cfg["num_hidden_layers"]):
            params[f"blocks.{i}.layers.{j}.weight"] = (d, d)
            if bias:
                params[f"blocks.{i}.layers.{j}.bias"] = (d,)
    lm_head_names = ["lm_head.weight"] if cfg.get("original_lm_head") else [
        f"lm_heads.{i}.weight" for i in range(cfg["num_heads"])]
    params.update(dict.fromkeys(lm_head_names, (vocab, d)))
    tensors = {}
    for file in glob.glob(os.path.join(path, "*.safetensors")):
        tensors.update(load_file(file))
    ledger, loaded = Ledger(tensors), {}
    for name in tensors:
        target = name.replace("medusa_heads.", "")
        if cfg.get("original_lm_head") and target == "lm_heads.0.weight":
            target = "lm_head.weight"
        if target in params:
            loaded[target] = ledger.take(name)
            assert tuple(loaded[target].shape) == params[target], target
    assert not ledger.unused(), f"vLLM would silently skip {ledger.unused()}"
    assert set(loaded) == set(params), f"vLLM parameters left uninitialised: {sorted(set(params) - set(loaded))}"
    lm = lambda i: loaded[lm_head_names[0] if cfg.get("original_lm_head") else f"lm_heads.{i}.weight"]  # noqa: E731
    return [([(loaded[f"blocks.{i}.layers.{j}.weight"], loaded.get(f"blocks.{i}.layers.{j}.bias"))
              for j in range(cfg["num_hidden_layers"])], lm(i)) for i in range(cfg["num_heads"])]


def read_tgi(path: str, base_lm_head: torch.Tensor):
    """TGI: medusa_num_heads decides the speculation depth; per-head lm_heads, else the v2 loader."""
    with open(os.path.join(path, "config.json")) as f:
        cfg = json.load(f)
    assert cfg["base_model_name_or_path"]
    speculate, layers = cfg["medusa_num_heads"], cfg["medusa_num_layers"]
    tensors = load_file(os.path.join(path, "medusa_lm_head.safetensors"))
    ledger = Ledger(tensors)
    try:
        heads = [([(ledger.take(f"{i}.{j}.linear.weight"), ledger.take(f"{i}.{j}.linear.bias")) for j in range(layers)],
                  ledger.take(f"{i}.{layers}.weight")) for i in range(speculate)]
        loader = "v1"
    except KeyError:
        assert layers == 1, "TGI's version-2 loader asserts medusa_num_layers == 1"
        ledger = Ledger(tensors)
        heads = [([(ledger.take(f"{i}.0.linear.weight"), ledger.take(f"{i}.0.linear.bias"))], base_lm_head)
                 for i in range(speculate)]
        loader = "v2"
    assert not ledger.unused(), f"TGI would not read {ledger.unused()}"
    return heads, loader


def read_trtllm(path: str):
    """TensorRT-LLM convert_checkpoint.py, with the head/layer counts of the README's command."""
    with open(os.path.join(path, "README.md")) as f:
        readme = f.read()
    num_heads = int(re.search(r"--num_medusa_heads (\d+)", readme).group(1))
    layers = int(re.search(r"--num_medusa_layers (\d+)", readme).group(1))
    assert re.search(r"--medusa_model_dir (\S+)", readme).group(1) == os.path.abspath(path)
    pt = os.path.join(path, "medusa_lm_head.pt")  # preferred by convert_checkpoint.py when present
    tensors = torch.load(pt, weights_only=True) if os.path.exists(pt) else load_file(
        os.path.join(path, "medusa_lm_head.safetensors"))
    ledger = Ledger(tensors)
    heads = [([(ledger.take(f"{h}.{l}.linear.weight"), ledger.take(f"{h}.{l}.linear.bias")) for l in range(layers)],
              ledger.take(f"{h}.{layers}.weight")) for h in range(num_heads)]
    assert not ledger.unused(), f"TensorRT-LLM would not read {ledger.unused()}"
    return heads


def read_fasterdecoding(path: str):
    """FasterDecoding MedusaModel: config fields, medusa_lm_head.pt, load_state_dict(strict=False)."""
    with open(os.path.join(path, "config.json")) as f:
        cfg = json.load(f)
    assert cfg["base_model_name_or_path"]
    layers = cfg["medusa_num_layers"]
    ledger = Ledger(torch.load(os.path.join(path, "medusa_lm_head.pt"), weights_only=True))
    heads = [([(ledger.take(f"{i}.{j}.linear.weight"), ledger.take(f"{i}.{j}.linear.bias")) for j in range(layers)],
              ledger.take(f"{i}.{layers}.weight")) for i in range(cfg["medusa_num_heads"])]
    assert not ledger.unused(), f"FasterDecoding (strict=False) would skip {ledger.unused()}"
    return heads


# ----------------------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def base_dir(tmp_path_factory):
    """A tiny Llama with tied embeddings on disk: its lm_head is stored only as the embedding."""
    path = str(tmp_path_factory.mktemp("base"))
    tiny_model(tie_word_embeddings=True).save_pretrained(path)
    return path


def trained_heads(base_dir: str, out_dir: str, layers: int, head_type: str, seed: int = 0) -> MedusaModel:
    """Heads with random (non-identity) weights on the base, saved in our format."""
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(base_dir).eval()
    model = MedusaModel(base, MedusaConfig(medusa_num_heads=NUM_HEADS, medusa_num_layers=layers,
                                           base_model_name_or_path=base_dir, head_type=head_type))
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in model.medusa_head.parameters():
            p.normal_(0, 0.2)
    model.save_pretrained(out_dir)
    return model


VARIANTS = [(1, "own_lm_head"), (2, "own_lm_head"), (1, "shared_lm_head"), (2, "shared_lm_head")]


@pytest.fixture(scope="module", params=VARIANTS, ids=lambda v: f"L{v[0]}-{v[1]}")
def ours(request, base_dir, tmp_path_factory):
    layers, head_type = request.param
    path = str(tmp_path_factory.mktemp("ours"))
    return path, trained_heads(base_dir, path, layers, head_type)


def check_round_trip(model: MedusaModel, export_dir: str, engine_heads):
    """Engine reader and our reader give the same head logits as the original heads."""
    hidden = torch.randn(2, 5, model.config.hidden_size)
    with torch.no_grad():
        expected = model.head_logits(hidden)
        torch.testing.assert_close(run_heads(engine_heads, hidden), expected, rtol=0, atol=1e-5)
        if export_dir is not None:
            back = MedusaModel.from_pretrained(export_dir, base_model=model.base_model)
            torch.testing.assert_close(back.head_logits(hidden), expected, rtol=0, atol=1e-5)


# ----------------------------------------------------------------------------------------------- formats
def test_vllm(ours, tmp_path, base_dir):
    path, model = ours
    notes = export.export(path, "vllm", str(tmp_path))
    with open(tmp_path / "config.json") as f:
        cfg = json.load(f)
    assert cfg["base_model_name_or_path"] == base_dir and cfg["medusa_fc_bias"] is True
    assert cfg["original_lm_head"] is model.config.shared_lm_head
    assert any("lm_heads.0.weight" in n for n in notes) == model.config.shared_lm_head
    check_round_trip(model, str(tmp_path), read_vllm(str(tmp_path)))  # medusa-llm loads the export back too


def test_tgi(ours, tmp_path):
    path, model = ours
    notes = export.export(path, "tgi", str(tmp_path))
    heads, loader = read_tgi(str(tmp_path), model.lm_head.weight)
    keeps_v2 = model.config.shared_lm_head and model.config.medusa_num_layers == 1
    assert loader == ("v2" if keeps_v2 else "v1")
    materialised = model.config.shared_lm_head and not keeps_v2
    assert any("medusa_num_layers == 1" in n and "materialised" in n for n in notes) == materialised
    check_round_trip(model, str(tmp_path), heads)


def test_trtllm(ours, tmp_path):
    path, model = ours
    notes = export.export(path, "trtllm", str(tmp_path))
    assert not os.path.exists(tmp_path / "medusa_lm_head.pt")  # it would shadow the safetensors
    assert any("materialised" in n for n in notes) == model.config.shared_lm_head
    with open(tmp_path / "config.json") as f:  # the name TensorRT-LLM's MedusaConfig.from_hugging_face reads
        assert json.load(f)["num_medusa_heads"] == NUM_HEADS
    check_round_trip(model, str(tmp_path), read_trtllm(str(tmp_path)))


def test_fasterdecoding(ours, tmp_path):
    path, model = ours
    notes = export.export(path, "fasterdecoding", str(tmp_path))
    with open(tmp_path / "config.json") as f:
        assert set(json.load(f)) == {"medusa_num_heads", "medusa_num_layers", "base_model_name_or_path"}
    assert any("tied layers" in n for n in notes) == (model.config.medusa_num_layers > 1)
    check_round_trip(model, str(tmp_path), read_fasterdecoding(str(tmp_path)))


def test_fasterdecoding_safetensors_option(ours, tmp_path):
    path, model = ours
    export.export(path, "fasterdecoding", str(tmp_path), safetensors=True)
    assert sorted(os.listdir(tmp_path)) == ["config.json", "medusa_lm_head.safetensors"]
    hidden = torch.randn(4, model.config.hidden_size)
    back = MedusaModel.from_pretrained(str(tmp_path), base_model=model.base_model)
    with torch.no_grad():
        torch.testing.assert_close(back.head_logits(hidden), model.head_logits(hidden), rtol=0, atol=1e-5)


# ----------------------------------------------------------------------------------------------- inputs
def test_full_model_input(base_dir, tmp_path):
    """A FasterDecoding full model (heads inside model.safetensors) exports, naming itself as the base."""
    model = trained_heads(base_dir, str(tmp_path / "heads"), 1, "own_lm_head")
    full = tmp_path / "full"
    model.base_model.save_pretrained(full)
    weights = load_file(full / "model.safetensors")
    weights.update({f"medusa_head.{k}": v.contiguous() for k, v in model.medusa_head.state_dict().items()})
    save_file(weights, full / "model.safetensors")
    with open(full / "config.json") as f:
        cfg = json.load(f)
    with open(full / "config.json", "w") as f:
        json.dump(cfg | {"medusa_num_heads": NUM_HEADS, "medusa_num_layers": 1}, f)
    export.export(str(full), "vllm", str(tmp_path / "out"))
    with open(tmp_path / "out" / "config.json") as f:
        assert json.load(f)["base_model_name_or_path"] == str(full)
    check_round_trip(model, None, read_vllm(str(tmp_path / "out")))


def test_lm_head_read_without_loading_the_model(base_dir, monkeypatch):
    """Tied embeddings: the lm_head comes from the embedding tensor in the safetensors, model not loaded."""
    from transformers import AutoModelForCausalLM

    expected = AutoModelForCausalLM.from_pretrained(base_dir).get_output_embeddings().weight
    monkeypatch.setattr(export.AutoModelForCausalLM, "from_pretrained",
                        lambda *a, **k: pytest.fail("loaded the whole base model"))
    torch.testing.assert_close(export.base_lm_head_weight(base_dir), expected, rtol=0, atol=0)


def test_base_model_override(ours, tmp_path, base_dir):
    path, _ = ours
    export.export(path, "tgi", str(tmp_path), base_model=base_dir + "/")
    with open(tmp_path / "config.json") as f:
        assert json.load(f)["base_model_name_or_path"] == base_dir + "/"


# ----------------------------------------------------------------------------------------------- CLI errors
def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "medusa.export", *args], capture_output=True, text=True,
                          env=os.environ | {"PYTHONPATH": REPO_ROOT}, cwd=REPO_ROOT, timeout=120)


def test_cli_success_and_bad_folder(base_dir, tmp_path):
    trained_heads(base_dir, str(tmp_path / "heads"), 1, "shared_lm_head")
    ok = cli("--model", str(tmp_path / "heads"), "--format", "trtllm", "--output", str(tmp_path / "out"))
    assert ok.returncode == 0, ok.stderr
    assert "materialised" in ok.stdout and "README.md" in ok.stdout
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "config.json").write_text(json.dumps({"medusa_num_heads": 2}))
    bad = cli("--model", str(tmp_path / "empty"), "--format", "vllm", "--output", str(tmp_path / "x"))
    assert bad.returncode == 1 and bad.stdout == ""
    assert bad.stderr.count("\n") == 1 and "No Medusa heads" in bad.stderr and "Traceback" not in bad.stderr
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize("case", ["unknown_format", "no_config", "v2_tgi_two_layers_no_base", "safetensors_flag"])
def test_cli_errors(case, base_dir, tmp_path, capsys):
    heads = str(tmp_path / "heads")
    if case == "v2_tgi_two_layers_no_base":
        trained_heads(base_dir, heads, 2, "shared_lm_head")
        cfg = json.loads(open(os.path.join(heads, "config.json")).read())
        cfg["base_model_name_or_path"] = "some-org/not-here"
        open(os.path.join(heads, "config.json"), "w").write(json.dumps(cfg))
    elif case != "no_config":
        trained_heads(base_dir, heads, 1, "own_lm_head")
    fmt = {"unknown_format": "onnx", "safetensors_flag": "vllm"}.get(case, "tgi")
    extra = ["--safetensors"] if case == "safetensors_flag" else []
    capsys.readouterr()  # drop the set-up's progress bars
    code = export.main(["--model", heads, "--format", fmt, "--output", str(tmp_path / "out"), *extra])
    err = capsys.readouterr().err
    assert code != 0 and err.count("\n") == 1 and err.startswith("error: ")
    expected = {
        "unknown_format": "Unknown export format 'onnx'",
        "no_config": "is not a directory",
        "v2_tgi_two_layers_no_base": "TGI reads shared-lm_head heads only with medusa_num_layers == 1 (these have 2)",
        "safetensors_flag": "--format fasterdecoding only",
    }[case]
    assert expected in err
    if case == "v2_tgi_two_layers_no_base":
        assert "--base-model" in err
    assert not (tmp_path / "out").exists()


def test_mismatched_weights_refused(base_dir, tmp_path):
    trained_heads(base_dir, str(tmp_path / "heads"), 1, "own_lm_head")
    weights = load_file(tmp_path / "heads" / "medusa_lm_head.safetensors")
    del weights["1.0.linear.bias"]
    save_file(weights, tmp_path / "heads" / "medusa_lm_head.safetensors")
    with pytest.raises(CheckpointError, match=r"missing keys \['1\.0\.linear\.bias'\]"):
        export.export(str(tmp_path / "heads"), "vllm", str(tmp_path / "out"))


def test_non_empty_output_is_refused_unless_overwrite_which_clears_it(base_dir, tmp_path, capsys):
    heads, out = str(tmp_path / "heads"), tmp_path / "out"
    trained_heads(base_dir, heads, 1, "own_lm_head")
    assert export.main(["--model", heads, "--format", "vllm", "--output", str(out)]) == 0
    capsys.readouterr()
    assert export.main(["--model", heads, "--format", "tgi", "--output", str(out)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"--output {out} is not empty" in err and "--overwrite" in err
    assert sorted(os.listdir(out)) == ["config.json", "model.safetensors"]  # untouched
    assert export.main(["--model", heads, "--format", "tgi", "--output", str(out), "--overwrite"]) == 0
    assert sorted(os.listdir(out)) == ["config.json", "medusa_lm_head.safetensors"]  # no stale vLLM weights
    with pytest.raises(ValueError, match="is --model or contains it"):
        export.export(heads, "tgi", str(tmp_path), overwrite=True)
    assert os.path.isdir(heads)
