"""Medusa-1 under ``torchrun --nproc_per_node=2`` on CPU (gloo): plain DDP, DeepSpeed ZeRO-2 and ZeRO-3."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from medusa.model import MedusaModel
from tests.train_helpers import HEADS, distilled, single_thread  # noqa: F401  (fixtures)

REPO = Path(__file__).resolve().parents[1]


def assert_no_thread_of_the_process_group_left_at_exit(stderr: str) -> None:
    """Gloo's worker threads alive into interpreter finalization may abort the process (see ``run_script``)."""
    threads = re.findall(r"threads at exit: (\[[^]]*\])", stderr)
    assert len(threads) == 2 and not any("gloo" in t or "tcpstore" in t for t in threads), threads


def torchrun(root, base, out, *extra) -> tuple[dict, str]:
    """Train on 2 CPU processes with the documented flags; returns training_summary.json and stderr."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "tests.exit_threads",
           str(REPO / "medusa/train/train_legacy.py"), "--model_name_or_path", base,
           "--data_path", str(root / "train.jsonl"), "--eval_data_path", str(root / "eval.jsonl"),
           "--output_dir", str(out), "--num_train_epochs", "1", "--per_device_train_batch_size", "4",
           "--gradient_accumulation_steps", "2", "--learning_rate", "1e-2", "--weight_decay", "0.0",
           "--warmup_ratio", "0.1", "--lr_scheduler_type", "cosine", "--model_max_length", "128",
           "--medusa_num_heads", str(HEADS), "--medusa_num_layers", "1", "--logging_steps", "2",
           "--save_strategy", "no", "--disable_tqdm", "true", "--use_cpu", *extra]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "DS_ACCELERATOR": "cpu"}
    proc = subprocess.run(cmd, cwd=out.parent, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((out / "training_summary.json").read_text())
    assert summary["world_size"] == 2 and summary["global_steps"] == 6  # 96 / (4 x 2 ranks x 2 accumulated)
    assert summary["epochs"] == pytest.approx(1.0)
    return summary, proc.stderr


@pytest.fixture(scope="module")
def ddp(distilled, tmp_path_factory):  # noqa: F811
    root, base = distilled
    out = tmp_path_factory.mktemp("ddp") / "heads"
    summary, stderr = torchrun(root, base, out)
    assert summary["deepspeed_zero_stage"] is None
    assert_no_thread_of_the_process_group_left_at_exit(stderr)
    return out


def test_ddp_trains_and_saves_loadable_heads(ddp):
    heads = load_file(str(ddp / "medusa_lm_head.safetensors"))
    assert heads["0.0.linear.weight"].abs().sum() > 0  # trained away from the zero init
    summary = json.loads((ddp / "training_summary.json").read_text())
    assert summary["heads"][0]["top1"] > 0.05  # chance: 1/95
    assert MedusaModel.from_pretrained(str(ddp)).config.medusa_num_heads == HEADS


def test_zero2_bf16_with_the_documented_deepspeed_json(distilled, tmp_path):  # noqa: F811
    root, base = distilled
    out = tmp_path / "heads"
    summary, _ = torchrun(root, base, out, "--bf16", "--deepspeed", str(REPO / "deepspeed.json"))
    assert summary["deepspeed_zero_stage"] == 2
    model = MedusaModel.from_pretrained(str(out))
    assert torch.isfinite(model.medusa_head[0][0].linear.weight).all()
    assert model.medusa_head[0][0].linear.weight.abs().sum() > 0


def test_zero3_partitions_gathers_and_matches_ddp(distilled, ddp, tmp_path):  # noqa: F811
    root, base = distilled
    config = json.loads((REPO / "deepspeed.json").read_text())
    config["zero_optimization"]["stage"] = 3
    (tmp_path / "zero3.json").write_text(json.dumps(config))
    out = tmp_path / "heads"
    assert torchrun(root, base, out, "--deepspeed", str(tmp_path / "zero3.json"))[0]["deepspeed_zero_stage"] == 3
    zero3, reference = (load_file(str(d / "medusa_lm_head.safetensors")) for d in (out, ddp))
    assert zero3.keys() == reference.keys()
    for key in reference:  # whole tensors (gathered), same training as DDP
        torch.testing.assert_close(zero3[key], reference[key], rtol=1e-4, atol=1e-6)


def test_medusa2_lora_self_distillation_under_ddp(distilled, tmp_path):  # noqa: F811
    root, base = distilled
    out = tmp_path / "medusa2"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "tests.exit_threads",
           str(REPO / "medusa/train/train_medusa2.py"), "--model_name_or_path", base, "--data_path", str(root / "train.jsonl"),
           "--output_dir", str(out), "--max_steps", "8", "--per_device_train_batch_size", "4",
           "--learning_rate", "3e-3", "--model_max_length", "128", "--medusa_num_heads", str(HEADS),
           "--medusa_heads_warmup", "heads_only", "--medusa_warmup_steps", "3", "--medusa_self_distillation", "true",
           "--save_strategy", "no", "--disable_tqdm", "true", "--use_cpu"]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((out / "training_summary.json").read_text())
    assert summary["world_size"] == 2 and summary["global_steps"] == 8
    assert_no_thread_of_the_process_group_left_at_exit(proc.stderr)
    assert MedusaModel.from_pretrained(str(out)).config.medusa_num_heads == HEADS
