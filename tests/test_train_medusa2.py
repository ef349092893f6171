"""Medusa-2 on a tiny model: LoRA + self-distillation KL keeps the backbone close; the checkpoint loads."""

import pytest
import torch
from transformers import AutoModelForCausalLM

from medusa.model import MedusaConfig, MedusaModel
from medusa.train.train_medusa2 import Medusa2Arguments, heads_coefficient, main as train
from tests.test_train_data import chat, write_jsonl
from tests.train_helpers import HEADS, distilled, held_out_metrics, save_tiny_base, single_thread  # noqa: F401  (fixtures)


def run(root, base, out, *extra):
    return train(["--model_name_or_path", base, "--data_path", str(root / "train.jsonl"),
                  "--eval_data_path", str(root / "eval.jsonl"), "--output_dir", str(out), "--max_steps", "40",
                  "--per_device_train_batch_size", "8", "--learning_rate", "3e-3", "--model_max_length", "256",
                  "--medusa_num_heads", str(HEADS), "--lora_r", "8", "--medusa_heads_coefficient", "0.2",
                  "--medusa_heads_warmup", "heads_only", "--medusa_warmup_steps", "5", "--logging_steps", "20",
                  "--save_strategy", "no", "--disable_tqdm", "true", "--seed", "0", *extra])


def backbone_shift(base, model: MedusaModel, root) -> float:
    """Mean KL(original ‖ trained) of the next-token distribution over the held-out conversations."""
    tok = model.get_tokenizer()
    ids = [tok(line, add_special_tokens=False, return_tensors="pt")["input_ids"][:, :200]
           for line in (root / "eval.jsonl").read_text().splitlines()]
    total = 0.0
    with torch.no_grad():
        for x in ids:
            p = base(x).logits.log_softmax(-1)
            q = model.lm_logits(model.hidden_states(x)).log_softmax(-1)
            total += (p.exp() * (p - q)).sum(-1).mean().item()
    return total / len(ids)


def test_self_distillation_moves_the_backbone_less_and_the_merged_model_loads(distilled, tmp_path):  # noqa: F811
    root, base_path = distilled
    base = AutoModelForCausalLM.from_pretrained(base_path)
    summaries, shifts = {}, {}
    for name, extra in (("kl", ["--medusa_self_distillation", "true"]), ("lm", [])):
        summaries[name] = run(root, base_path, tmp_path / name, *extra)
        out = tmp_path / name
        assert sorted(p.name for p in out.iterdir()) == ["adapter", "config.json", "medusa_lm_head.safetensors",
                                                         "training_summary.json"]
        model = MedusaModel.from_pretrained(str(out))  # the adapter is merged into the base at load
        shifts[name] = backbone_shift(base, model, root)
    assert shifts["kl"] < 0.5 * shifts["lm"], shifts
    assert shifts["lm"] > 1e-3  # the plain LM loss did train the backbone (adapters merged into the weights)
    fresh = MedusaModel(base, MedusaConfig(medusa_num_heads=HEADS, base_model_name_or_path=base_path))
    _, fresh_top1 = held_out_metrics(fresh, root)
    _, top1 = held_out_metrics(MedusaModel.from_pretrained(str(tmp_path / "kl")), root)
    assert (top1 > fresh_top1 + 0.1).all(), (top1, fresh_top1)
    assert summaries["kl"]["global_steps"] == 40 and summaries["kl"]["self_distillation"]


def test_sine_warmup_of_lambda0():
    args = Medusa2Arguments(medusa_heads_coefficient=0.2, medusa_heads_warmup="sine", medusa_warmup_steps=10)
    assert [heads_coefficient(s, args) for s in (0, 5, 10, 50)] == pytest.approx([0, 0.2 * 2**-0.5, 0.2, 0.2])
    assert heads_coefficient(0, Medusa2Arguments(medusa_heads_warmup="heads_only", medusa_warmup_steps=10)) == 0.2


def test_lora_checkpoint_resumes_and_full_fine_tune_saves(distilled, tmp_path):  # noqa: F811
    root, base_path = distilled
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    joint = ["--max_steps", "8", "--medusa_warmup_steps", "2"]  # LoRA trains from step 3: the checkpoint differs
    run(root, base_path, straight, *joint, "--save_strategy", "steps", "--save_steps", "4")
    ckpt = straight / "checkpoint-4"
    assert (ckpt / "medusa_lm_head.safetensors").exists() and (ckpt / "adapter" / "adapter_model.safetensors").exists()
    run(root, base_path, resumed, *joint, "--resume_from_checkpoint", str(ckpt))
    a, b = (MedusaModel.from_pretrained(str(d)) for d in (straight, resumed))
    for (name, x), y in zip(a.state_dict().items(), b.state_dict().values()):
        torch.testing.assert_close(x, y, rtol=1e-4, atol=1e-5, msg=name)

    full = tmp_path / "full"
    summary = run(root, base_path, full, "--max_steps", "6", "--use_lora", "false")
    assert not summary["lora"]
    model = MedusaModel.from_pretrained(str(full))
    base = AutoModelForCausalLM.from_pretrained(base_path)
    moved = [n for n, p in model.base_model.named_parameters() if not torch.equal(p, base.get_parameter(n))]
    assert "lm_head.weight" in moved and len(moved) > 10  # the whole backbone was trained


def test_data_whose_replies_are_all_cut_off_is_refused_and_nothing_is_saved(tmp_path):
    base = save_tiny_base(tmp_path / "base")
    data = write_jsonl(tmp_path / "late.jsonl", [chat("Hello! " * 20, "Too late.")] * 2)
    with pytest.raises(SystemExit, match=r"late.jsonl: 0 of 2 conversations kept; .* No target token"):
        train(["--model_name_or_path", base, "--data_path", data, "--output_dir", str(tmp_path / "out"),
               "--model_max_length", "48", "--max_steps", "1"])
    assert not (tmp_path / "out").exists()


def test_heads_start_from_a_given_checkpoint_of_the_same_shape(distilled, tmp_path):  # noqa: F811
    root, base_path = distilled
    run(root, base_path, tmp_path / "first", "--max_steps", "3")
    start = MedusaModel.from_pretrained(str(tmp_path / "first")).medusa_head.state_dict()
    run(root, base_path, tmp_path / "frozen", "--max_steps", "1", "--learning_rate", "0",
        "--medusa_init_heads", str(tmp_path / "first"))
    frozen = MedusaModel.from_pretrained(str(tmp_path / "frozen")).medusa_head.state_dict()
    assert all(torch.equal(start[k], frozen[k]) for k in start)  # a zero learning rate keeps the loaded heads
    with pytest.raises(SystemExit, match=r"--medusa_init_heads .* has medusa_num_heads=3, but --medusa_num_heads is 2"):
        run(root, base_path, tmp_path / "other", "--max_steps", "1", "--medusa_init_heads", str(tmp_path / "first"),
            "--medusa_num_heads", "2")
