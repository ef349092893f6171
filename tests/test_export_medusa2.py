"""Exports of Medusa-2 checkpoints: the backbone with its LoRA adapter merged, beside the heads.

The references are independent of medusa-llm's merge: peft's own ``merge_and_unload`` of the same adapter,
and the engine readers of tests/test_export.py (written from each engine's key names). Each engine's
folder is reloaded as that engine would: the backbone as a plain Hugging Face model from the path the
heads name (TGI, TensorRT-LLM) or the one served (vLLM), FasterDecoding's full model through its config's
``model_type`` and ``medusa_head.*`` keys.
"""

import json
import os
import re

import pytest
import torch
from peft import PeftModel
from safetensors.torch import load_file
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

from medusa import demo, export
from medusa.model import MedusaModel
from tests.test_export import Ledger, read_tgi, read_trtllm, read_vllm, run_heads
from tests.test_medusa2_checkpoint import write_medusa2
from tests.tiny import tiny_model, tiny_tokenizer

VARIANTS = [(1, "shared_lm_head"), (2, "own_lm_head")]


@pytest.fixture(scope="module", params=VARIANTS, ids=lambda v: f"L{v[0]}-{v[1]}")
def medusa2(request, tmp_path_factory):
    """(checkpoint dir, peft's merged model) on a tiny Llama with tied embeddings, like the demo base."""
    root = tmp_path_factory.mktemp("m2")
    tiny_model(tie_word_embeddings=True).save_pretrained(root / "base-llama")
    tiny_tokenizer().save_pretrained(root / "base-llama")
    layers, head_type = request.param
    reference = write_medusa2(root / "m2", seed=11, head_type=head_type, num_layers=layers)
    return str(root / "m2"), reference


def assert_is_the_fine_tuned_backbone(path: str, reference) -> None:
    """``path`` loads as a plain model with peft's merged weights and the base's tokenizer."""
    backbone = AutoModelForCausalLM.from_pretrained(path)
    assert type(backbone) is type(reference)
    for name, p in reference.named_parameters():
        torch.testing.assert_close(backbone.get_parameter(name), p, rtol=1e-5, atol=1e-6, msg=name)
    text = "Hello! How are you today?"
    assert AutoTokenizer.from_pretrained(path)(text)["input_ids"] == tiny_tokenizer()(text)["input_ids"]


def assert_heads_match(m2: str, engine_heads) -> None:
    """The engine's heads give the checkpoint's head logits."""
    model = MedusaModel.from_pretrained(m2)
    hidden = torch.randn(2, 5, model.config.hidden_size)
    with torch.no_grad():
        torch.testing.assert_close(run_heads(engine_heads, hidden), model.head_logits(hidden), rtol=0, atol=1e-5)


def assert_decodes_as_the_fine_tuned_backbone(path: str, reference) -> None:
    """medusa-llm loading the export (with the base it names) decodes greedily as peft's merged model."""
    model = MedusaModel.from_pretrained(path)
    torch.manual_seed(5)
    prompts = [torch.randint(3, 320, (n,)) for n in (6, 11)]
    expected = [reference.generate(p[None], max_new_tokens=16, do_sample=False, min_new_tokens=16, eos_token_id=None,
                                   pad_token_id=0)[0, len(p):].tolist() for p in prompts]
    assert model.generate(prompts, max_new_tokens=16, eos_token_id=[]) == expected


@pytest.mark.parametrize("engine", ["vllm", "tgi", "trtllm"])
def test_backbone_and_heads(engine, medusa2, tmp_path):
    m2, reference = medusa2
    notes = export.export(m2, engine, str(tmp_path))
    backbone, heads = str(tmp_path / export.BACKBONE_DIR), str(tmp_path / export.HEADS_DIR)
    assert sorted(os.listdir(tmp_path)) == sorted([export.BACKBONE_DIR, export.HEADS_DIR])
    assert notes[0].startswith(f"Medusa-2: the LoRA adapter of {m2} was merged") and backbone in notes[0]
    assert_is_the_fine_tuned_backbone(backbone, reference)
    with open(os.path.join(heads, "config.json")) as f:
        assert json.load(f)["base_model_name_or_path"] == backbone  # absolute: TGI loads the base from there
    if engine == "vllm":
        engine_heads = read_vllm(heads)  # `vllm serve backbone/` with heads/ as the speculative model
    elif engine == "tgi":
        engine_heads, _ = read_tgi(heads, AutoModelForCausalLM.from_pretrained(backbone).lm_head.weight)
    else:
        engine_heads = read_trtllm(heads)
        with open(os.path.join(heads, "README.md")) as f:
            assert re.search(r"--model_dir (\S+)", f.read()).group(1) == backbone
    assert_heads_match(m2, engine_heads)
    assert_decodes_as_the_fine_tuned_backbone(heads, reference)


def read_fasterdecoding_full_model(path: str):
    """FasterDecoding's MedusaModel.from_pretrained when config.json has a model_type: the config's head
    counts, ``medusa_head.{i}`` = ResBlocks then a bias-free lm_head, loaded by name from the weights."""
    config = AutoConfig.from_pretrained(path)
    assert config.model_type in ("llama", "mistral")
    layers = config.medusa_num_layers
    tensors = {}
    for file in os.listdir(path):
        if file.endswith(".safetensors"):
            tensors.update({k: v for k, v in load_file(os.path.join(path, file)).items() if k.startswith("medusa_head.")})
    ledger = Ledger(tensors)
    heads = [([(ledger.take(f"medusa_head.{i}.{j}.linear.weight"), ledger.take(f"medusa_head.{i}.{j}.linear.bias"))
               for j in range(layers)], ledger.take(f"medusa_head.{i}.{layers}.weight"))
             for i in range(config.medusa_num_heads)]
    assert not ledger.unused(), f"FasterDecoding would not read {ledger.unused()}"
    return heads


def test_fasterdecoding_full_model(medusa2, tmp_path):
    m2, reference = medusa2
    notes = export.export(m2, "fasterdecoding", str(tmp_path))
    assert_is_the_fine_tuned_backbone(str(tmp_path), reference)
    engine_heads = read_fasterdecoding_full_model(str(tmp_path))
    assert_heads_match(m2, engine_heads)
    shared = MedusaModel.from_pretrained(m2).config.shared_lm_head
    assert any("materialised" in n for n in notes) == shared
    assert any("tied layers" in n for n in notes) == (len(engine_heads[0][0]) > 1)
    assert_decodes_as_the_fine_tuned_backbone(str(tmp_path), reference)


def test_the_demo_base_and_a_base_model_override(tmp_path, monkeypatch):
    """A checkpoint naming the demo base merges into demo_base_dir(); --base-model merges into the one given."""
    reference = write_medusa2(tmp_path / "m2", seed=12)
    config_file = tmp_path / "m2" / "config.json"
    config_file.write_text(json.dumps(json.loads(config_file.read_text()) | {
        "base_model_name_or_path": demo.DEMO_BASE_NAME}))
    monkeypatch.setattr(demo, "demo_base_dir", lambda: str(tmp_path / "base-llama"))
    assert export.main(["--model", str(tmp_path / "m2"), "--format", "tgi", "--output", str(tmp_path / "a")]) == 0
    assert_is_the_fine_tuned_backbone(str(tmp_path / "a" / export.BACKBONE_DIR), reference)

    other = tiny_model(seed=3)  # another base: the same adapter merged into it
    other.save_pretrained(tmp_path / "other")
    tiny_tokenizer().save_pretrained(tmp_path / "other")
    monkeypatch.setattr(demo, "demo_base_dir", lambda: pytest.fail("--base-model overrides the demo base"))
    assert export.main(["--model", str(tmp_path / "m2"), "--format", "vllm", "--output", str(tmp_path / "b"),
                        "--base-model", str(tmp_path / "other")]) == 0
    expected = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tmp_path / "other"),
                                         tmp_path / "m2" / "adapter").merge_and_unload()
    assert_is_the_fine_tuned_backbone(str(tmp_path / "b" / export.BACKBONE_DIR), expected)


def test_fasterdecoding_refuses_an_architecture_it_cannot_serve(tmp_path, capsys):
    write_medusa2(tmp_path / "m2", arch="qwen2", seed=13)
    capsys.readouterr()  # drop the set-up's progress bars
    code = export.main(["--model", str(tmp_path / "m2"), "--format", "fasterdecoding", "--output", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 1 and err.count("\n") == 1
    assert "error: FasterDecoding's MedusaModel serves llama and mistral models only, and this backbone is qwen2" in err
    assert not (tmp_path / "out").exists()


def test_a_broken_adapter_leaves_the_output_untouched(tmp_path, capsys):
    write_medusa2(tmp_path / "m2", seed=14)
    (tmp_path / "m2" / "adapter" / "adapter_model.safetensors").write_bytes(b"not safetensors")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("earlier export")
    capsys.readouterr()
    code = export.main(["--model", str(tmp_path / "m2"), "--format", "vllm", "--output", str(tmp_path / "out"),
                        "--overwrite"])
    err = capsys.readouterr().err
    assert code == 1 and err.count("\n") == 1 and "adapter_model.safetensors cannot be read" in err
    assert os.listdir(tmp_path / "out") == ["keep.txt"]
