"""Publishing to the Hub, against a local fake Hub (tests/fake_hub.py) that stores what is uploaded."""

import json
import os
import subprocess
import sys

import pytest
import torch

from medusa import hf_utils
from medusa.model import MedusaConfig, MedusaModel
from tests.fake_hub import FakeHub
from tests.tiny import tiny_model

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BASE_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"


@pytest.fixture(scope="module")
def base():
    return tiny_model()


@pytest.fixture
def heads_dir(tmp_path, base):
    model = MedusaModel(base, MedusaConfig(medusa_num_heads=3, base_model_name_or_path=BASE_ID))
    torch.manual_seed(1)
    with torch.no_grad():
        for p in model.medusa_head.parameters():
            p.normal_(0, 0.2)
    model.save_pretrained(str(tmp_path / "heads"))
    return str(tmp_path / "heads"), model


@pytest.fixture
def hub():
    with FakeHub() as hub:
        yield hub


def test_upload_round_trip(heads_dir, hub, tmp_path, base):
    folder, model = heads_dir
    with open(os.path.join(folder, "training_summary.json"), "w") as f:
        json.dump({"data": "self-distilled ShareGPT prompts", "num_examples": 1234, "epochs": 2,
                   "per_head": [{"top1": 0.56, "top5": 0.78}, {"top1": 0.32, "top5": 0.56}, {"top1": 0.2}]}, f)
    with open(os.path.join(folder, "benchmark.json"), "w") as f:
        json.dump({"tokens_per_step": 2.41, "speedup": 1.87, "hardware": "H200", "unknown": 5}, f)
    url = hf_utils.push_to_hub(folder, "me/medusa-tiny", private=True, revision="v1", commit_message="first",
                               endpoint=hub.endpoint, token="hf_fake")
    assert url.startswith(hub.endpoint)
    repo = hub.repos["me/medusa-tiny"]
    assert repo["private"] is True
    uploaded = repo["branches"]["v1"]
    assert sorted(uploaded) == ["README.md", "benchmark.json", "config.json", "medusa_lm_head.safetensors",
                                "training_summary.json"]
    for name, content in uploaded.items():
        with open(os.path.join(folder, name), "rb") as f:
            assert f.read() == content, name
    # What the Hub holds loads back with identical heads.
    download = tmp_path / "download"
    download.mkdir()
    for name, content in uploaded.items():
        (download / name).write_bytes(content)
    back = MedusaModel.from_pretrained(str(download), base_model=base)
    hidden = torch.randn(3, model.config.hidden_size)
    with torch.no_grad():
        torch.testing.assert_close(back.head_logits(hidden), model.head_logits(hidden), rtol=0, atol=0)

    card = uploaded["README.md"].decode()
    front = card.split("---")[1]
    assert f"base_model: {BASE_ID}" in front and "library_name: medusa-llm" in front and "- medusa" in front
    for expected in ["| Heads | 3 |", "self-distilled ShareGPT prompts", "| num_examples | 1234 |",
                     "| 0 | 0.560 | 0.780 |", "| 2 | 0.200 | – |", "| Tokens per step (per base forward) | 2.41 |",
                     "| Speedup over plain greedy decoding | 1.87 |", "| Hardware | H200 |",
                     "With vLLM 0.9.0 to 0.32.0 (later releases removed Medusa", '"method": "medusa"', "--format vllm", '"num_speculative_tokens": 3', "--format tgi",
                     "--model-id /data/medusa-tgi",
                     'snapshot_download("me/medusa-tiny")']:
        assert expected in card, expected
    assert "unknown" not in card


def test_card_without_optional_files(heads_dir):
    folder, _ = heads_dir
    card = hf_utils.model_card(folder, hf_utils.load_heads_checkpoint(folder), "me/x")
    assert "## Training" not in card and "## Measured speed" not in card and "## How to run" in card


def test_broken_summary_is_ignored(heads_dir):
    folder, _ = heads_dir
    with open(os.path.join(folder, "training_summary.json"), "w") as f:
        f.write("{not json")
    with open(os.path.join(folder, "benchmark.json"), "w") as f:
        json.dump([1, 2], f)
    card = hf_utils.model_card(folder, hf_utils.load_heads_checkpoint(folder), "me/x")
    assert "## Training" not in card and "## Measured speed" not in card


def test_local_base_path_stays_out_of_metadata(tmp_path, base):
    model = MedusaModel(base, MedusaConfig(medusa_num_heads=2, base_model_name_or_path=str(tmp_path)))
    model.save_pretrained(str(tmp_path / "heads"))
    card = hf_utils.model_card(str(tmp_path / "heads"), hf_utils.load_heads_checkpoint(str(tmp_path / "heads")), "a/b")
    assert "base_model:" not in card.split("---")[1] and str(tmp_path) in card


@pytest.mark.parametrize("folder_case", ["no_heads", "bad_shapes", "missing"])
def test_invalid_folder_refused_before_hub(folder_case, heads_dir, hub, tmp_path, capsys):
    folder, _ = heads_dir
    if folder_case == "no_heads":
        os.remove(os.path.join(folder, "medusa_lm_head.safetensors"))
        expected = "No Medusa heads"
    elif folder_case == "bad_shapes":
        cfg = json.load(open(os.path.join(folder, "config.json")))
        json.dump(cfg | {"medusa_num_heads": 4}, open(os.path.join(folder, "config.json"), "w"))
        expected = "medusa_num_heads=4 but the weights hold 3 heads"
    else:
        folder, expected = str(tmp_path / "nowhere"), "is not a directory"
    code = hf_utils.main(["--folder", folder, "--repo", "me/x", "--endpoint", hub.endpoint, "--token", "hf_fake"])
    err = capsys.readouterr().err
    assert code == 1 and err.count("\n") == 1 and expected in err and "cannot be published" in err
    assert hub.requests == []  # nothing created
    assert not os.path.exists(os.path.join(folder, "README.md"))


@pytest.mark.parametrize("step", ["create", "commit"])
def test_failed_upload_says_why(step, heads_dir, hub, capsys):
    folder, _ = heads_dir
    hub.fail[step] = (403, "You don't have the rights to create a model under the namespace \"me\"")
    code = hf_utils.main(["--folder", folder, "--repo", "me/x", "--endpoint", hub.endpoint, "--token", "hf_fake"])
    err = capsys.readouterr().err
    assert code == 1 and err.count("\n") == 1 and "Traceback" not in err
    assert "HTTP 403" in err and "don't have the rights" in err
    assert ("creating the repository" if step == "create" else "uploading") in err


def test_unreachable_endpoint(heads_dir, capsys):
    folder, _ = heads_dir
    code = hf_utils.main(["--folder", folder, "--repo", "me/x", "--endpoint", "http://127.0.0.1:9", "--token", "t"])
    err = capsys.readouterr().err
    assert code == 1 and err.count("\n") == 1 and "creating the repository me/x on http://127.0.0.1:9 failed" in err


def test_cli_and_import_side_effects(heads_dir, hub):
    folder, _ = heads_dir
    env = os.environ | {"PYTHONPATH": REPO_ROOT, "HF_ENDPOINT": hub.endpoint, "HF_TOKEN": "hf_fake"}
    imported = subprocess.run([sys.executable, "-c", "import medusa.hf_utils"], env=env, capture_output=True,
                              text=True, timeout=120)
    assert imported.returncode == 0, imported.stderr
    assert hub.requests == [] and not os.path.exists(os.path.join(folder, "README.md"))
    run = subprocess.run([sys.executable, "-m", "medusa.hf_utils", "--folder", folder, "--repo", "me/cli"],
                         env=env, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert "Uploaded" in run.stdout and "README.md" in hub.repos["me/cli"]["branches"]["main"]


def test_invalid_repo_id_is_refused_before_anything_is_written(heads_dir, hub, capsys):
    folder, _ = heads_dir
    code = hf_utils.main(["--folder", folder, "--repo", "not a repo!!", "--endpoint", hub.endpoint, "--token", "t"])
    err = capsys.readouterr().err
    assert code == 1 and err.count("\n") == 1 and "--repo 'not a repo!!' is not a valid repository id" in err
    assert hub.requests == [] and not os.path.exists(os.path.join(folder, "README.md"))


def test_own_readme_is_kept_unless_replace_readme(heads_dir, hub, capsys):
    folder, _ = heads_dir
    with open(os.path.join(folder, "README.md"), "w") as f:
        f.write("# My own card\n")
    args = ["--folder", folder, "--repo", "me/x", "--endpoint", hub.endpoint, "--token", "hf_fake"]
    assert hf_utils.main(args) == 0
    assert hub.repos["me/x"]["branches"]["main"]["README.md"] == b"# My own card\n"
    assert "note: uploaded the folder's own README.md" in capsys.readouterr().out
    with open(os.path.join(folder, "README.md")) as f:
        assert f.read() == "# My own card\n"
    assert hf_utils.main(args + ["--replace-readme"]) == 0
    assert b"| Heads | 3 |" in hub.repos["me/x"]["branches"]["main"]["README.md"]


def test_corrupt_heads_file_is_one_line_naming_it(heads_dir, hub, capsys):
    folder, _ = heads_dir
    heads_file = os.path.join(folder, "medusa_lm_head.safetensors")
    with open(heads_file, "r+b") as f:
        f.truncate(os.path.getsize(heads_file) // 2)
    code = hf_utils.main(["--folder", folder, "--repo", "me/x", "--endpoint", hub.endpoint, "--token", "t"])
    err = capsys.readouterr().err
    assert code == 1 and err.count("\n") == 1 and f"{heads_file} cannot be read: it is truncated or corrupt" in err
    assert hub.requests == []
