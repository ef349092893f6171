"""medusa.eval.agreement against a position-by-position recomputation with peft's merged model."""

import json

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM

from medusa.eval.agreement import main as agreement
from tests.test_medusa2_checkpoint import write_medusa2
from tests.tiny import tiny_tokenizer


def write_questions(path, n: int) -> str:
    words = "the fox jumps over lazy dog medusa heads tree".split()
    rng = torch.Generator().manual_seed(n)
    with open(path, "w") as f:
        for i in range(n):
            turn = " ".join(words[j] for j in torch.randint(len(words), (4,), generator=rng).tolist())
            f.write(json.dumps({"question_id": i, "category": "ab"[i % 2], "turns": [turn]}) + "\n")
    return str(path)


def reference(original, tuned, questions: str, new_tokens: int) -> dict[str, list[float]]:
    """Per category: [positions, agreements, KL sum], each answer generated alone by HF generate."""
    tok = tiny_tokenizer()
    counts = {}
    for line in open(questions).read().split("\n")[:-1]:
        q = json.loads(line)
        ids = tok.apply_chat_template([{"role": "user", "content": q["turns"][0]}], add_generation_prompt=True,
                                      return_tensors="pt", return_dict=True)["input_ids"]
        seq = original.generate(ids, max_new_tokens=new_tokens, do_sample=False, pad_token_id=0)[0]
        answer = seq[ids.shape[1]:].tolist()
        seq = seq[: ids.shape[1] + next((i + 1 for i, t in enumerate(answer) if t == 2), len(answer))]
        c = counts.setdefault(q["category"], [0, 0, 0.0])
        for t in range(ids.shape[1] - 1, len(seq) - 1):
            with torch.no_grad():
                p = original(seq[None, : t + 1]).logits[0, -1].log_softmax(-1)
                r = tuned(seq[None, : t + 1]).logits[0, -1].log_softmax(-1)
            c[0] += 1
            c[1] += int(p.argmax() == r.argmax())
            c[2] += (p.exp() * (p - r)).sum().item()
    return counts


@pytest.mark.parametrize("zero_adapter", [False, True])
def test_agreement_equals_a_position_by_position_recomputation(tmp_path, zero_adapter):
    merged = write_medusa2(tmp_path / "m2", seed=7)
    if zero_adapter:  # B = 0: the fine-tuned model is the original
        weights = tmp_path / "m2" / "adapter" / "adapter_model.safetensors"
        save_file({k: v * 0 if ".lora_B." in k else v for k, v in load_file(weights).items()}, weights)
        merged = AutoModelForCausalLM.from_pretrained(tmp_path / "base-llama")
    questions = write_questions(tmp_path / "q.jsonl", 4)
    result = agreement(["--model", str(tmp_path / "m2"), "--questions", questions, "--max-new-tokens", "10",
                        "--batch-size", "3", "--output", str(tmp_path / "out.json")])
    assert json.loads((tmp_path / "out.json").read_text()) == result
    original = AutoModelForCausalLM.from_pretrained(tmp_path / "base-llama")
    expected = reference(original, merged, questions, 10)
    for category, (positions, agree, kl) in expected.items():
        figures = result["categories"][category]
        assert figures["positions"] == positions and figures["top1_agreement"] == agree / positions
        assert figures["kl_per_token"] == pytest.approx(kl / positions, rel=1e-3, abs=1e-6)
    assert result["positions"] == sum(c[0] for c in expected.values())
    if zero_adapter:
        assert result["top1_agreement"] == 1 and result["kl_per_token"] == pytest.approx(0, abs=1e-6)
    else:
        assert 0 < result["top1_agreement"] < 1 and result["kl_per_token"] > 1e-3


def test_a_model_without_adapter_needs_the_original(tmp_path, capsys):
    write_medusa2(tmp_path / "m2", seed=8)
    for name in ("adapter_config.json", "adapter_model.safetensors"):
        (tmp_path / "m2" / "adapter" / name).unlink()
    with pytest.raises(SystemExit):
        agreement(["--model", str(tmp_path / "m2"), "--questions", write_questions(tmp_path / "q.jsonl", 1)])
    assert "holds no LoRA adapter: pass the original model with --original-model" in capsys.readouterr().err
