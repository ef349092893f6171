"""Training labels: assistant-only targets (EOS included) and head k's shift by k + 2."""

import json
import os

import pytest
import torch
import torch.nn.functional as F

from medusa.train.data import (IGNORE_INDEX, DataError, PadCollator, chat_renderer, load_conversations,
                               load_training_conversations, read_records, tokenize_conversation)
from medusa.train.losses import distillation_kl, head_weights, medusa_head_losses
from tests.tiny import tiny_tokenizer

TWO_TURNS = [{"role": "user", "content": "Hello!"}, {"role": "assistant", "content": "I am fine."},
             {"role": "user", "content": "How are you?"}, {"role": "assistant", "content": "Thank you."}]


def test_chatml_targets_are_assistant_content_and_im_end_token_by_token():
    tok = tiny_tokenizer()
    out = tokenize_conversation(tok, chat_renderer(tok), TWO_TURNS, max_length=512)
    ids, labels = out["input_ids"].tolist(), out["labels"].tolist()
    # Independent reference: the target spans, tokenized piece by piece from the ChatML text.
    pieces = []
    for m in TWO_TURNS:
        header = f"<|im_start|>{m['role']}\n"
        if m["role"] == "assistant":
            pieces += [(header, False), (m["content"], True), ("<|im_end|>", True), ("\n", False)]
        else:
            pieces += [(header + m["content"] + "<|im_end|>\n", False)]
    expected_ids, expected_target = [], []
    for text, target in pieces:
        piece = tok(text, add_special_tokens=False)["input_ids"]
        expected_ids += piece
        expected_target += [target] * len(piece)
    assert ids == expected_ids
    assert [label != IGNORE_INDEX for label in labels] == expected_target
    assert all(label in (IGNORE_INDEX, i) for label, i in zip(labels, ids))
    assert sum(1 for label in labels if label == tok.eos_token_id) == 2  # EOS of both replies


def test_truncation_and_padding():
    tok = tiny_tokenizer()
    full = tokenize_conversation(tok, chat_renderer(tok), TWO_TURNS, max_length=512)
    short = tokenize_conversation(tok, chat_renderer(tok), TWO_TURNS, max_length=20)
    assert torch.equal(short["input_ids"], full["input_ids"][:20]) and torch.equal(short["labels"], full["labels"][:20])
    batch = PadCollator(pad_token_id=0)([short, full])
    assert batch["input_ids"].shape == (2, len(full["input_ids"]))
    assert batch["attention_mask"][0].sum() == 20 and (batch["labels"][0, 20:] == IGNORE_INDEX).all()


def test_fastchat_template_for_tokenizers_without_one():
    tok = tiny_tokenizer()
    tok.chat_template = None
    render = chat_renderer(tok, "lmsys/vicuna-7b-v1.3")  # FastChat's vicuna_v1.1 template
    out = tokenize_conversation(tok, render, TWO_TURNS, max_length=512)
    text = tok.decode(out["input_ids"])
    assert text.startswith("A chat between") and "USER: Hello! ASSISTANT: I am fine.</s>USER:" in text
    targets = [tok.decode([i]) for i, label in zip(out["input_ids"], out["labels"]) if label != IGNORE_INDEX]
    assert "".join(targets) == " I am fine.</s> Thank you.</s>"


def test_load_sharegpt_and_generate_output(tmp_path):
    sharegpt = [{"id": "a", "conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello"}]},
                {"id": "b", "conversations": [{"from": "human", "value": "no answer"}]},
                {"id": "c", "conversations": [{"from": "gpt", "value": "Welcome"}, {"from": "human", "value": "Hi"},
                                              {"from": "gpt", "value": "Hello"}]}]
    (tmp_path / "s.json").write_text(json.dumps(sharegpt))
    (tmp_path / "g.jsonl").write_text(json.dumps({"id": "a", "sample": 0, "messages": [
        {"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]}) + "\n")
    expected = [[{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]]
    # Without a reply: dropped; an opening bot message: dropped (nothing to condition it on).
    assert load_conversations(str(tmp_path / "s.json")) == expected * 2
    assert load_conversations(str(tmp_path / "g.jsonl")) == expected


def chat(*turns) -> list[dict]:
    """``chat(user, assistant, user, ...)``: alternating messages."""
    return [{"role": ("user", "assistant")[i % 2], "content": c} for i, c in enumerate(turns)]


def write_jsonl(path, conversations) -> str:
    path.write_text("".join(json.dumps({"messages": c}) + "\n" for c in conversations))
    return str(path)


def test_conversations_without_a_target_are_skipped_and_counted(tmp_path):
    tok = tiny_tokenizer()
    render = chat_renderer(tok)
    first = chat("Hello!", "I am fine.")
    limit = len(tokenize_conversation(tok, render, first, 10**6)["input_ids"])  # the first exchange just fits
    typo = [{"role": "usr", "content": "Hello!"}, {"role": "assistant", "content": "Hi."}]
    late = chat("Hello! " * 40, "Too late.")  # the reply starts beyond the limit
    data = [first, typo, chat("No answer."), late, first + chat("And you?", "Cut away.")]
    kept, summary = load_training_conversations(write_jsonl(tmp_path / "d.jsonl", data), tok, render, limit)
    assert kept == [first, first + chat("And you?", "Cut away.")]
    assert (summary.read, summary.kept, summary.with_unknown_roles, summary.without_reply,
            summary.truncated_conversations, summary.truncated_turns) == (5, 2, 1, 1, 1, 1)
    assert summary.describe() == (
        f"{tmp_path / 'd.jsonl'}: 2 of 5 conversations kept; skipped 1 conversation(s) with unknown roles "
        f"('usr' x1; known: system, user, assistant); skipped 1 conversation(s) without an assistant message; "
        f"skipped 1 conversation(s) with every assistant message beyond --model_max_length {limit} tokens; "
        f"1 assistant message(s) of kept conversations lie beyond --model_max_length {limit} tokens and are not "
        f"trained on.")
    # Every reply cut away: nothing kept; --max_train_samples reads only the first records.
    assert load_training_conversations(str(tmp_path / "d.jsonl"), tok, render, 4)[0] == []
    assert load_training_conversations(str(tmp_path / "d.jsonl"), tok, render, limit, limit=2)[1].read == 2


@pytest.mark.parametrize("name, text, error", [
    ("bad.jsonl", '{"messages": []}\n\n{"messages": [\n', r"bad.jsonl, line 3: not valid JSON \(Expecting value at column 15\)"),
    ("bad.json", '[\n{"messages": []},\n{"messages": []}\n,,]\n', r"bad.json, line 4: not valid JSON"),  # a broken document
    ("first.jsonl", '{"messages": [}\n{"messages": []}\n', r"first.jsonl, line 1: not valid JSON"),
    ("no_content.jsonl", json.dumps({"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant"}]}),
     r"no_content.jsonl, line 1: message 1 has no 'content' \(has \['role'\]\)"),
    ("sharegpt.json", json.dumps([{"conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt"}]}]),
     r"sharegpt.json, record 0: message 1 has no 'value'"),
    ("not_text.jsonl", json.dumps({"messages": [{"role": "user", "content": 3}]}), r"message 0's 'content' is not a string"),
    ("other.jsonl", json.dumps({"prompt": "Hi"}), r"other.jsonl, line 1: none of the keys messages/conversation/conversations"),
])
def test_bad_records_name_the_file_and_the_line(tmp_path, name, text, error):
    (tmp_path / name).write_text(text)
    with pytest.raises(DataError, match=error):
        load_conversations(str(tmp_path / name))


def test_head_k_targets_token_k_plus_2():
    """Logits that put all mass on labels[t + k + 2] give zero loss and full accuracy; off by one, none."""
    B, S, V, H = 2, 12, 17, 3
    labels = torch.randint(V, (B, S))
    labels[0, :3] = IGNORE_INDEX  # a prompt: no targets there
    aligned = torch.full((H, B, S, V), -1e4)
    shifted = torch.full((H, B, S, V), -1e4)
    for k in range(H):
        for t in range(S - k - 2):
            aligned[k, :, t].scatter_(-1, labels[:, t + k + 2].clamp(min=0)[:, None], 1e4)
            shifted[k, :, t].scatter_(-1, labels[:, t + k + 1].clamp(min=0)[:, None], 1e4)
    losses, stats = medusa_head_losses(aligned, labels)
    counts = torch.tensor([float((labels[:, k + 2:] != IGNORE_INDEX).sum()) for k in range(H)])
    assert torch.allclose(losses, torch.zeros(H)) and torch.equal(stats[:, 0], counts)
    assert torch.equal(stats[:, 1], counts) and torch.equal(stats[:, 2], counts)
    losses, stats = medusa_head_losses(shifted, labels)
    assert (losses > 100).all()
    # Off by one position the peak hits only where the (clamped) previous label equals the target.
    repeats = torch.tensor([float(((labels[:, k + 2:] == labels[:, k + 1:-1].clamp(min=0))
                                   & (labels[:, k + 2:] != IGNORE_INDEX)).sum()) for k in range(H)])
    assert torch.equal(stats[:, 1], repeats)


def test_head_losses_match_plain_cross_entropy():
    H, B, S, V = 2, 3, 9, 11
    logits, labels = torch.randn(H, B, S, V), torch.randint(V, (B, S))
    labels[1, 4:] = IGNORE_INDEX
    losses, stats = medusa_head_losses(logits, labels)
    for k in range(H):
        keep = [(b, t) for b in range(B) for t in range(S - k - 2) if labels[b, t + k + 2] != IGNORE_INDEX]
        ref = torch.stack([torch.nn.functional.cross_entropy(logits[k, b, t], labels[b, t + k + 2]) for b, t in keep])
        top5 = sum(int(labels[b, t + k + 2] in logits[k, b, t].topk(5).indices) for b, t in keep)
        assert torch.allclose(losses[k], ref.mean(), atol=1e-6) and stats[k, 2] == top5


def test_distillation_mixes_cross_entropy_with_kl_to_the_base_at_t_plus_k_plus_1():
    """Head k at t is pulled towards the base distribution at t + k + 1 (the one that predicts labels[t + k + 2])."""
    H, B, S, V = 3, 2, 10, 13
    teacher, labels = torch.randn(B, S, V), torch.randint(V, (B, S))
    labels[0, :4] = IGNORE_INDEX
    aligned = torch.zeros(H, B, S, V)
    for k in range(H):
        aligned[k, :, : S - k - 1] = teacher[:, k + 1:]
    ce_only, _ = medusa_head_losses(aligned, labels)
    losses, stats = medusa_head_losses(aligned, labels, teacher, distillation=1.0)
    assert torch.allclose(losses, torch.zeros(H), atol=1e-5)  # the soft label itself: no KL left
    assert torch.allclose(stats[:, 3] / stats[:, 0], ce_only)  # logged CE stays the cross-entropy
    off_by_one, _ = medusa_head_losses(aligned.roll(1, dims=2), labels, teacher, distillation=1.0)
    assert (off_by_one > 0.1).all()

    student, alpha = torch.randn(H, B, S, V), 0.3
    losses, _ = medusa_head_losses(student, labels, teacher, distillation=alpha)
    for k in range(H):
        keep = [(b, t) for b in range(B) for t in range(S - k - 2) if labels[b, t + k + 2] != IGNORE_INDEX]
        ce = torch.stack([F.cross_entropy(student[k, b, t], labels[b, t + k + 2]) for b, t in keep]).mean()
        kl = torch.stack([F.kl_div(student[k, b, t].log_softmax(-1), teacher[b, t + k + 1].log_softmax(-1),
                                   log_target=True, reduction="sum") for b, t in keep]).mean()
        assert torch.allclose(losses[k], (1 - alpha) * ce + alpha * kl, atol=1e-5)
    with pytest.raises(ValueError, match="teacher_logits"):
        medusa_head_losses(student, labels, distillation=alpha)


def test_weights_and_kl():
    assert head_weights(4, 0.8) == pytest.approx([1, 0.8, 0.64, 0.512])
    student, teacher = torch.randn(2, 5, 7), torch.randn(2, 5, 7)
    mask = torch.tensor([[1, 1, 0, 0, 1], [0, 0, 0, 1, 1]], dtype=torch.bool)
    p, q = teacher[mask].softmax(-1), student[mask].softmax(-1)
    assert torch.allclose(distillation_kl(student[mask], teacher[mask]), (p * (p / q).log()).sum(-1).mean(), atol=1e-5)
    assert distillation_kl(teacher[mask], teacher[mask]).abs() < 1e-6


def test_jsonl_strings_may_hold_unicode_line_separators(tmp_path):
    path = tmp_path / "data.jsonl"
    records = [{"id": "a", "turns": ["one\u2028two"]}, {"id": "b", "turns": ["three\u2029four\x85"]}]
    path.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in records) + "\n", encoding="utf-8")
    assert read_records(str(path)) == records


def test_loss_memory_benchmark_reports_what_the_loss_adds():
    import re
    import subprocess
    import sys

    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out = subprocess.run([sys.executable, "-m", "benchmarks.loss_memory", "--batch", "2", "--seq", "512", "--vocab", "8192"],
                         cwd=repo, capture_output=True, text=True, check=True).stdout
    added, logits = map(float, re.fullmatch(r"3 heads x 2 x 512 x 8192, 30% targets: loss and backward added "
                                            r"([\d.]+) GiB; logits ([\d.]+) GiB\n", out).groups())
    assert logits == 0.05 and logits < added < 1.0  # at least the logits' gradient
