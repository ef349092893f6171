"""Medusa-1 training end to end on a tiny model: self-distilled data -> heads that predict and accelerate."""

import json
import re
import sys

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, HfArgumentParser

from medusa.model import MedusaConfig, MedusaModel
from medusa.train.data import load_conversations
from medusa.train.arguments import MedusaTrainingArguments, ModelArguments
from medusa.train.train_legacy import build_medusa_model, main as train
from tests.fitting import greedy_reference
from tests.test_train_data import chat, write_jsonl
from tests.train_helpers import HEADS, distilled, held_out_metrics, save_tiny_base, single_thread  # noqa: F401  (fixtures)


def train_args(root, base, out, steps, *extra):
    return ["--model_name_or_path", base, "--data_path", str(root / "train.jsonl"), "--output_dir", str(out),
            "--max_steps", str(steps), "--per_device_train_batch_size", "8", "--learning_rate", "1e-2",
            "--weight_decay", "0.0", "--warmup_ratio", "0.1", "--lr_scheduler_type", "cosine",
            "--model_max_length", "256", "--medusa_num_heads", str(HEADS), "--medusa_num_layers", "1",
            "--logging_steps", "50", "--save_strategy", "no", "--disable_tqdm", "true", "--seed", "0", *extra]


@pytest.fixture(scope="module")
def trained(distilled):  # noqa: F811
    root, base = distilled
    summary = train(train_args(root, base, root / "heads", 250, "--eval_data_path", str(root / "eval.jsonl")))
    return root, base, summary


def test_training_lowers_every_head_loss_and_accelerates_decoding(trained):
    root, base_path, summary = trained
    base = AutoModelForCausalLM.from_pretrained(base_path)
    fresh = MedusaModel(base, MedusaConfig(medusa_num_heads=HEADS, base_model_name_or_path=base_path))
    fresh_loss, fresh_top1 = held_out_metrics(fresh, root)
    model = MedusaModel.from_pretrained(str(root / "heads"))
    assert json.loads((root / "heads" / "config.json").read_text())["base_model_name_or_path"] == base_path
    loss, top1 = held_out_metrics(model, root)
    assert (loss < 0.6 * fresh_loss).all(), (loss, fresh_loss)
    assert (top1 > 0.3).all() and (top1 > fresh_top1 + 0.1).all(), (top1, fresh_top1)  # chance: 1/95
    # The logged held-out accuracies are the ones measured here.
    assert [h["top1"] for h in summary["heads"]] == pytest.approx(top1.tolist(), abs=2e-3)
    assert summary["global_steps"] == 250 and summary["train_conversations"] == 96

    tok = model.get_tokenizer()
    prompts = [c[:1] for c in load_conversations(str(root / "eval.jsonl"))[:4]]
    accepted = {"fresh": [], "trained": []}
    for messages in prompts:
        ids = tok.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt",
                                      return_dict=True)["input_ids"]
        reference = greedy_reference(model.base_model, ids, 32)
        for name, m in (("fresh", fresh), ("trained", model)):
            # The heads' tree alone, every step: copy branches would credit the fresh heads, and trees that
            # follow acceptance choose by measured step times (the machine's speed).
            steps = list(m.medusa_generate(ids, max_new_tokens=32, copy_chains=0, adaptive=False))
            tokens = [t for s in steps for t in s["new_token_ids"]]
            assert tokens[:32] == reference  # still exactly greedy
            accepted[name] += [s["accept_length"] for s in steps]
    mean = {k: sum(v) / len(v) for k, v in accepted.items()}
    assert mean["trained"] > mean["fresh"] + 1.0, mean  # measured: 2.4 vs 0.3


def test_base_is_frozen_and_only_heads_are_saved(trained, tmp_path):
    root, base_path, _ = trained
    parser = HfArgumentParser((ModelArguments, MedusaTrainingArguments))
    model_args, training_args = parser.parse_args_into_dataclasses(
        ["--model_name_or_path", base_path, "--output_dir", str(tmp_path), "--medusa_num_heads", str(HEADS)])
    model = build_medusa_model(model_args, training_args)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {f"medusa_head.{k}" for k in model.medusa_head.state_dict()}  # lm_head frozen too
    assert all(p.dtype == torch.float32 for p in model.medusa_head.parameters())
    saved = load_file(str(root / "heads" / "medusa_lm_head.safetensors"))
    assert sorted(saved) == sorted(f"{i}.{j}" for i in range(HEADS) for j in ("0.linear.weight", "0.linear.bias",
                                                                               "1.weight"))
    summary = json.loads((root / "heads" / "training_summary.json").read_text())
    assert summary["heads"][0]["top5"] >= summary["heads"][0]["top1"]


def test_resume_from_checkpoint_continues_exactly(distilled, tmp_path):  # noqa: F811
    root, base = distilled
    straight = tmp_path / "straight"
    train(train_args(root, base, straight, 6, "--save_strategy", "steps", "--save_steps", "3"))
    assert sorted(p.name for p in straight.glob("checkpoint-3/*.safetensors")) == ["medusa_lm_head.safetensors"]
    resumed = tmp_path / "resumed"
    summary = train(train_args(root, base, resumed, 6, "--resume_from_checkpoint", str(straight / "checkpoint-3")))
    assert summary["global_steps"] == 6
    a, b = (load_file(str(d / "medusa_lm_head.safetensors")) for d in (straight, resumed))
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=1e-6)


def test_shared_lm_head_heads_train_and_save_as_version_2(distilled, tmp_path):  # noqa: F811
    root, base = distilled
    summary = train(train_args(root, base, tmp_path, 20, "--medusa_head_type", "shared_lm_head",
                               "--eval_data_path", str(root / "eval.jsonl")))
    assert json.loads((tmp_path / "config.json").read_text())["version"] == "2"
    assert sorted(load_file(str(tmp_path / "medusa_lm_head.safetensors"))) == sorted(
        f"{i}.0.linear.{w}" for i in range(HEADS) for w in ("weight", "bias"))  # no vocabulary projection
    model = MedusaModel.from_pretrained(str(tmp_path))
    assert model.config.shared_lm_head and summary["heads"][0]["top1"] > 0.2


def test_heads_distilled_from_the_base_distribution_alone_learn_the_shifted_tokens(distilled, tmp_path):  # noqa: F811
    """α = 1: no hard label at all, so the heads learn token t + k + 2 only if the trainer aligns the teacher."""
    root, base = distilled
    summary = train(train_args(root, base, tmp_path, 60, "--medusa_distillation", "1.0",
                               "--eval_data_path", str(root / "eval.jsonl")))
    top1 = [h["top1"] for h in summary["heads"]]
    assert min(top1) > 0.2, top1  # measured 0.53 / 0.38 / 0.37; with the teacher one position off, 0.08 at most


@pytest.mark.parametrize("flag, layer", [("--load_in_4bit", "Linear4bit"), ("--load_in_8bit", "Linear8bitLt")])
def test_heads_train_on_a_quantised_frozen_base(distilled, tmp_path, flag, layer):  # noqa: F811
    root, base = distilled
    parser = HfArgumentParser((ModelArguments, MedusaTrainingArguments))
    model_args, training_args = parser.parse_args_into_dataclasses(
        ["--model_name_or_path", base, "--output_dir", str(tmp_path), "--medusa_num_heads", str(HEADS), flag])
    model = build_medusa_model(model_args, training_args)
    assert type(model.base_model.model.layers[0].mlp.up_proj).__name__ == layer  # bitsandbytes, on the CPU
    assert {n for n, p in model.named_parameters() if p.requires_grad} == {
        f"medusa_head.{k}" for k in model.medusa_head.state_dict()}
    train(train_args(root, base, tmp_path / "heads", 60, flag))
    # Heads trained on the quantised base predict the full-precision base's continuations too.
    fresh = MedusaModel(AutoModelForCausalLM.from_pretrained(base), MedusaConfig(medusa_num_heads=HEADS))
    loss, top1 = held_out_metrics(MedusaModel.from_pretrained(str(tmp_path / "heads")), root)
    fresh_loss, fresh_top1 = held_out_metrics(fresh, root)
    assert (loss < 0.6 * fresh_loss).all() and (top1 > fresh_top1 + 0.1).all(), (loss, fresh_loss, top1, fresh_top1)


@pytest.fixture(scope="module")
def tiny_base(tmp_path_factory):
    return save_tiny_base(tmp_path_factory.mktemp("tiny") / "base")


def quick_args(base, data, out, *extra):
    return ["--model_name_or_path", base, "--data_path", str(data), "--output_dir", str(out), "--max_steps", "1",
            "--per_device_train_batch_size", "2", "--medusa_num_heads", "2", "--model_max_length", "48",
            "--save_strategy", "no", "--disable_tqdm", "true", "--report_to", "none", *extra]


def test_data_whose_replies_are_all_cut_off_is_refused_and_nothing_is_saved(tiny_base, tmp_path):
    data = write_jsonl(tmp_path / "late.jsonl", [chat("Hello! " * 20, "Too late.")] * 3)
    with pytest.raises(SystemExit, match=r"late.jsonl: 0 of 3 conversations kept; skipped 3 conversation\(s\) with every "
                                         r"assistant message beyond --model_max_length 48 tokens\. No target token"):
        train(quick_args(tiny_base, data, tmp_path / "out"))
    assert not (tmp_path / "out").exists()


def test_partly_unusable_data_trains_on_the_rest_with_a_warning_that_counts(tiny_base, tmp_path, caplog):
    data = write_jsonl(tmp_path / "mixed.jsonl", [chat("Hi", "Hello"), chat("Hi"), chat("Hello! " * 20, "Late."),
                                                  [{"role": "usr", "content": "Hi"}, {"role": "assistant", "content": "Yo"}],
                                                  chat("Hi", "Hello " * 10, "More?", "Cut away.")])
    summary = train(quick_args(tiny_base, data, tmp_path / "out"))
    assert summary["train_conversations"] == 2
    assert ("mixed.jsonl: 2 of 5 conversations kept; skipped 1 conversation(s) with unknown roles ('usr' x1; known: "
            "system, user, assistant); skipped 1 conversation(s) without an assistant message; skipped 1 conversation(s) "
            "with every assistant message beyond --model_max_length 48 tokens; 1 assistant message(s) of kept "
            "conversations lie beyond --model_max_length 48 tokens and are not trained on.") in caplog.text


def test_bad_data_lines_end_in_one_line_naming_file_and_line(tiny_base, tmp_path):
    (tmp_path / "bad.jsonl").write_text(json.dumps({"messages": chat("Hi", "Hello")}) + "\n{oops\n")
    with pytest.raises(SystemExit, match=r"^\S*bad.jsonl, line 2: not valid JSON \(Expecting property name enclosed "
                                         r"in double quotes at column 2\)\.$"):
        train(quick_args(tiny_base, tmp_path / "bad.jsonl", tmp_path / "out"))


@pytest.mark.parametrize("make, error", [
    (lambda tmp: ["--output_dir", str(tmp / "a_file")], "--output_dir .*a_file: .*a_file is a file, not a folder."),
    (lambda tmp: ["--output_dir", str(tmp / "a_file" / "heads")], "--output_dir .*a_file/heads: .*a_file is a file, not a folder."),
    (lambda tmp: ["--deepspeed", "deepspeed.json"],
     r"--deepspeed needs deepspeed, which is not installed: pip install 'medusa-llm\[train\]'"),
])
def test_bad_options_end_in_a_usage_line_and_one_error_line(tiny_base, tmp_path, monkeypatch, capsys, make, error):
    (tmp_path / "a_file").write_text("")
    (tmp_path / "d.jsonl").write_text("")
    monkeypatch.setitem(sys.modules, "deepspeed", None)  # as after `pip install medusa-llm` (no [train] extra)
    with pytest.raises(SystemExit) as exit_info:
        train(quick_args(tiny_base, tmp_path / "d.jsonl", tmp_path / "out")[:-6] + make(tmp_path))
    assert exit_info.value.code == 2
    usage, message = capsys.readouterr().err.splitlines()
    assert usage.startswith("usage: ") and re.fullmatch(r"\S+: error: " + error, message), message


def test_help_starts_with_a_description_and_the_medusa_options(capsys):
    with pytest.raises(SystemExit) as exit_info:
        train(["--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    assert text.startswith("usage: ") and "--model_name_or_path BASE --data_path DATA --output_dir DIR" in text
    assert "Medusa-1 training: Medusa heads on a fully frozen base model." in text.splitlines()[2]
    order = [text.index(s) for s in ("--data_path DATA_PATH", "--model_max_length", "--medusa_num_heads",
                                     "Hugging Face TrainingArguments", "--output_dir OUTPUT_DIR", "--learning_rate")]
    assert order == sorted(order)
