"""Medusa-1 under ``torchrun --nproc_per_node=2`` on CPU (gloo): plain DDP and DeepSpeed ZeRO-2."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from medusa.model import MedusaModel
from tests.test_train_legacy import HEADS, distilled, single_thread  # noqa: F401  (module fixtures)

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("deepspeed", [False, True], ids=["ddp-fp32", "zero2-bf16"])
def test_torchrun_two_processes_train_and_save(distilled, tmp_path, deepspeed):  # noqa: F811
    root, base = distilled
    out = tmp_path / "heads"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(REPO / "medusa/train/train_legacy.py"), "--model_name_or_path", base,
           "--data_path", str(root / "train.jsonl"), "--eval_data_path", str(root / "eval.jsonl"),
           "--output_dir", str(out), "--num_train_epochs", "1", "--per_device_train_batch_size", "4",
           "--gradient_accumulation_steps", "2", "--learning_rate", "1e-2", "--weight_decay", "0.0",
           "--warmup_ratio", "0.1", "--lr_scheduler_type", "cosine", "--model_max_length", "128",
           "--medusa_num_heads", str(HEADS), "--medusa_num_layers", "1", "--logging_steps", "2",
           "--save_strategy", "no", "--disable_tqdm", "true", "--use_cpu"]
    if deepspeed:  # the documented command's flags, bf16 included
        cmd += ["--bf16", "--deepspeed", str(REPO / "deepspeed.json")]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "DS_ACCELERATOR": "cpu"}
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((out / "training_summary.json").read_text())
    assert summary["world_size"] == 2 and summary["global_steps"] == 6  # 96 / (4 x 2 ranks x 2 accumulated)
    assert summary["deepspeed_zero_stage"] == (2 if deepspeed else None)
    assert summary["epochs"] == pytest.approx(1.0)
    heads = load_file(str(out / "medusa_lm_head.safetensors"))
    assert heads["0.0.linear.weight"].abs().sum() > 0  # trained away from the zero init
    model = MedusaModel.from_pretrained(str(out))
    assert model.config.medusa_num_heads == HEADS and torch.isfinite(model.medusa_head[0][0].linear.weight).all()
    assert summary["heads"][0]["top1"] > 0.05  # chance: 1/95
