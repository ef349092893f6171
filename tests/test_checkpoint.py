"""Checkpoint layouts (docs/design.md, Heads and checkpoint layouts): round trips and clear errors."""

import json
import os
import re
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from medusa.model import CheckpointError, MedusaConfig, MedusaModel
from medusa.model.medusa_choices import resolve_medusa_choices
from medusa.model.tree_policy import POLICY_FILES
from tests.tiny import tiny_model, tiny_tokenizer


def trained_like(base, num_heads=3, head_type="own_lm_head", num_layers=1, seed=0):
    """A MedusaModel with random (non-identity) head weights, so a wrong load cannot pass."""
    model = MedusaModel(base, MedusaConfig(medusa_num_heads=num_heads, medusa_num_layers=num_layers, head_type=head_type))
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in model.medusa_head.parameters():
            p.normal_()
    return model


def same_heads(a, b):
    hidden = torch.randn(2, 5, a.config.hidden_size)
    with torch.no_grad():
        return a.head_logits(hidden).equal(b.head_logits(hidden))


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("base")
    tiny_model("llama").save_pretrained(path)
    return str(path)


def write_config(path, **fields):
    (path / "config.json").write_text(json.dumps(fields))


@pytest.mark.parametrize("head_type, num_layers", [("own_lm_head", 1), ("shared_lm_head", 2), ("own_lm_head", 0)])
def test_our_format_round_trips_and_loads_its_base(tmp_path, base_dir, head_type, num_layers):
    model = trained_like(tiny_model("llama"), head_type=head_type, num_layers=num_layers)
    model.config.base_model_name_or_path = base_dir
    model.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["version"] == ("2" if head_type == "shared_lm_head" else "1")
    assert config["base_model_name_or_path"] == base_dir and config["medusa_num_layers"] == num_layers
    keys = set(load_file(tmp_path / "medusa_lm_head.safetensors"))
    expected = {f"{i}.{j}.linear.{w}" for i in range(3) for j in range(num_layers) for w in ("weight", "bias")}
    if head_type == "own_lm_head":
        expected |= {f"{i}.{num_layers}.weight" for i in range(3)}
    assert keys == expected
    loaded = MedusaModel.from_pretrained(str(tmp_path))  # base from base_model_name_or_path
    assert loaded.config.head_type == head_type and loaded.config.medusa_num_layers == num_layers
    assert same_heads(model, loaded)


@pytest.mark.parametrize("file_format", ["pt", "safetensors"])
def test_fasterdecoding_heads_only_layouts_load(tmp_path, base_dir, file_format):
    model = trained_like(tiny_model("llama"), num_heads=5)
    state = {k: v.clone() for k, v in model.medusa_head.state_dict().items()}
    # The published Vicuna configs say 2 heads while the weights hold 5: the weights win.
    write_config(tmp_path, medusa_num_heads=2, medusa_num_layers=1, base_model_name_or_path=base_dir)
    if file_format == "pt":
        torch.save(state, tmp_path / "medusa_lm_head.pt")
    else:
        save_file(state, tmp_path / "medusa_lm_head.safetensors")
    loaded = MedusaModel.from_pretrained(str(tmp_path))
    assert loaded.config.medusa_num_heads == 5
    assert same_heads(model, loaded)


def test_version_2_heads_load(tmp_path):
    base = tiny_model("llama")
    model = trained_like(base, num_heads=4, head_type="shared_lm_head")
    save_file(dict(model.medusa_head.state_dict()), tmp_path / "medusa_lm_head.safetensors")
    write_config(tmp_path, medusa_num_heads=4, medusa_num_layers=1, version="2")
    loaded = MedusaModel.from_pretrained(str(tmp_path), base_model=base)
    assert loaded.config.shared_lm_head and same_heads(model, loaded)


@pytest.mark.parametrize("sharded", [False, True])
def test_fasterdecoding_full_model_loads(tmp_path, sharded):
    base = tiny_model("mistral")
    model = trained_like(base, num_heads=3)
    base.save_pretrained(tmp_path, max_shard_size="100KB" if sharded else "1GB")
    heads = {f"medusa_head.{k}": v.contiguous() for k, v in model.medusa_head.state_dict().items()}
    if sharded:
        save_file(heads, tmp_path / "model-medusa.safetensors")
        index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
        assert len(set(index["weight_map"].values())) > 1
        index["weight_map"].update({k: "model-medusa.safetensors" for k in heads})
        (tmp_path / "model.safetensors.index.json").write_text(json.dumps(index))
    else:
        save_file(load_file(tmp_path / "model.safetensors") | heads, tmp_path / "model.safetensors", metadata={"format": "pt"})
    config = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps(config | {"medusa_num_heads": 3, "medusa_num_layers": 1}))
    loaded = MedusaModel.from_pretrained(str(tmp_path))
    assert same_heads(model, loaded)
    ids = torch.randint(3, 320, (1, 9))
    with torch.no_grad():
        assert loaded.base_model(ids).logits.equal(base(ids).logits)


def test_missing_head_key_is_named(tmp_path):
    base = tiny_model("llama")
    model = trained_like(base)
    model.save_pretrained(tmp_path)
    state = load_file(tmp_path / "medusa_lm_head.safetensors")
    del state["1.0.linear.bias"]
    state["2.0.linear.scale"] = torch.zeros(2)
    save_file(state, tmp_path / "medusa_lm_head.safetensors")
    with pytest.raises(CheckpointError, match=r"missing keys \['1\.0\.linear\.bias'\].*unexpected keys \['2\.0\.linear\.scale'\]"):
        MedusaModel.from_pretrained(str(tmp_path), base_model=base)


def test_wrong_hidden_size_is_explained(tmp_path):
    trained_like(tiny_model("llama", hidden_size=32)).save_pretrained(tmp_path)
    with pytest.raises(CheckpointError, match="hidden_size=32 but the base model has hidden_size=64"):
        MedusaModel.from_pretrained(str(tmp_path), base_model=tiny_model("llama", hidden_size=64))
    # Without our config fields (FasterDecoding layout), the shapes tell.
    write_config(tmp_path, medusa_num_heads=3, medusa_num_layers=1)
    with pytest.raises(CheckpointError, match=r"0\.0\.linear\.weight has shape \(32, 32\) but the base model needs \(64, 64\)"):
        MedusaModel.from_pretrained(str(tmp_path), base_model=tiny_model("llama", hidden_size=64))


def test_head_count_disagreeing_with_weights_is_an_error(tmp_path):
    base = tiny_model("llama")
    trained_like(base, num_heads=3).save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps(config | {"medusa_num_heads": 4}))
    with pytest.raises(CheckpointError, match="medusa_num_heads=4 but the weights hold 3 heads"):
        MedusaModel.from_pretrained(str(tmp_path), base_model=base)
    (tmp_path / "config.json").write_text(json.dumps(config | {"medusa_num_heads": 2}))
    with pytest.raises(CheckpointError, match="medusa_num_heads=2 but the weights hold 3 heads"):
        MedusaModel.from_pretrained(str(tmp_path), base_model=base)


def test_fasterdecoding_config_overstating_heads_is_an_error(tmp_path):
    base = tiny_model("llama")
    save_file(dict(trained_like(base, num_heads=2).medusa_head.state_dict()), tmp_path / "medusa_lm_head.safetensors")
    write_config(tmp_path, medusa_num_heads=5, medusa_num_layers=1)
    with pytest.raises(CheckpointError, match="medusa_num_heads=5 but the weights hold 2 heads"):
        MedusaModel.from_pretrained(str(tmp_path), base_model=base)


@pytest.mark.parametrize("setup, message", [
    ("nothing", "is not a directory"),
    ("empty", "No config.json"),
    ("plain_model", "plain model, not a Medusa checkpoint"),
    ("config_only", "No Medusa heads"),
    ("full_model_without_heads", "hold no 'medusa_head"),
    ("no_base", "names no base_model_name_or_path"),
    ("missing_base", "does not exist"),
])
def test_unloadable_folders_say_why(tmp_path, setup, message):
    base = tiny_model("llama")
    path = tmp_path / "ckpt"
    if setup != "nothing":
        path.mkdir()
    if setup == "plain_model":
        base.save_pretrained(path)
    if setup == "config_only":
        write_config(path, medusa_num_heads=2, medusa_num_layers=1)
    if setup == "full_model_without_heads":
        base.save_pretrained(path)
        config = json.loads((path / "config.json").read_text())
        (path / "config.json").write_text(json.dumps(config | {"medusa_num_heads": 2}))
    if setup in ("no_base", "missing_base"):
        model = trained_like(base)
        model.config.base_model_name_or_path = str(tmp_path / "nowhere") if setup == "missing_base" else None
        model.save_pretrained(path)
        if setup == "no_base":
            config = json.loads((path / "config.json").read_text())
            (path / "config.json").write_text(json.dumps(config | {"base_model_name_or_path": None}))
    with pytest.raises(CheckpointError, match=message):
        MedusaModel.from_pretrained(str(path))


@pytest.mark.parametrize("file_format", ["safetensors", "pt"])
def test_truncated_heads_file_is_one_error_naming_it(tmp_path, file_format):
    base = tiny_model("llama")
    model = trained_like(base)
    model.save_pretrained(tmp_path)
    heads_file = tmp_path / "medusa_lm_head.safetensors"
    if file_format == "pt":
        heads_file.unlink()
        heads_file = tmp_path / "medusa_lm_head.pt"
        torch.save(dict(model.medusa_head.state_dict()), heads_file)
    data = heads_file.read_bytes()
    heads_file.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=rf"{re.escape(str(heads_file))} cannot be read: it is truncated or corrupt"):
        MedusaModel.from_pretrained(str(tmp_path), base_model=base)


@pytest.mark.parametrize("name", ["config.json", "tree"])
def test_invalid_json_names_the_file(tmp_path, name):
    base = tiny_model("llama")
    trained_like(base).save_pretrained(tmp_path)
    path = tmp_path / ("config.json" if name == "config.json" else "my_tree.json")
    path.write_text("[[0],\n oops]")
    with pytest.raises(CheckpointError, match=rf"{re.escape(str(path))} is not valid JSON \(Expecting value: line 2"):
        if name == "config.json":
            MedusaModel.from_pretrained(str(tmp_path), base_model=base)
        else:
            resolve_medusa_choices(str(path), num_heads=3)


def test_tokenizer_comes_from_the_base_model_override(tmp_path, base_dir):
    tiny_tokenizer().save_pretrained(base_dir)
    model = trained_like(tiny_model("llama"))
    model.config.base_model_name_or_path = str(tmp_path / "moved-away")  # e.g. a symbolic or Hub name
    model.save_pretrained(tmp_path / "heads")
    loaded = MedusaModel.from_pretrained(str(tmp_path / "heads"), base_model=base_dir)
    assert loaded.get_tokenizer().convert_tokens_to_ids("<|im_end|>") == tiny_tokenizer().convert_tokens_to_ids("<|im_end|>")
    assert loaded.config.base_model_name_or_path == str(tmp_path / "moved-away")  # saved heads keep their name


def test_cpu_tree_shipped_beside_the_heads_replaces_the_gpu_tree_policy(tmp_path, base_dir):
    demo_heads = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "medusa", "demo_heads")
    trained_like(tiny_model("llama")).save_pretrained(tmp_path)
    for name in POLICY_FILES:  # a policy measured on an H200 for three heads
        shutil.copy(os.path.join(demo_heads, name), tmp_path / name)
    assert MedusaModel.from_pretrained(str(tmp_path), base_model=base_dir).tree_policy is not None
    (tmp_path / "tree.json").write_text("[[0], [0, 0], [0, 0, 0]]")  # the GPU's: not used on CPU
    (tmp_path / "cpu_tree.json").write_text("[[0], [1]]")
    loaded = MedusaModel.from_pretrained(str(tmp_path), base_model=base_dir)
    assert loaded.tree_policy is None and loaded.default_medusa_choices == str(tmp_path / "cpu_tree.json")
    assert loaded.tree_buffers().num_nodes == loaded.tree_buffers("[[0], [1]]").num_nodes == 3
