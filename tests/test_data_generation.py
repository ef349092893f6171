"""Self-distillation data: resuming without duplicates or losses, multi-turn replay, the server back end."""

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import torch

import create_data
from data_generation import backends
from data_generation.generate import main as generate
from medusa.jsonl import read_jsonl
from tests.train_helpers import save_tiny_base, write_prompts


def read_lines(path):
    return read_jsonl(str(path))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("gen")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield root, save_tiny_base(root / "base"), write_prompts(root / "prompts.jsonl", 20, multi_turn_every=3)
    torch.set_num_threads(threads)


def local_args(root, base, prompts, output):
    return ["--input", prompts, "--output", str(output), "--model", base, "--max-new-tokens", "12",
            "--batch-size", "4", "--samples", "2", "--temperature", "0"]


def test_interrupted_run_resumes_without_duplicates_or_losses(tiny, monkeypatch):
    root, base, prompts = tiny
    assert generate(local_args(root, base, prompts, root / "reference.jsonl")) == 0
    reference = read_lines(root / "reference.jsonl")
    assert len(reference) == 40 and len({(r["id"], r["sample"]) for r in reference}) == 40
    multi = next(r for r in reference if r["id"] == "p-0")["messages"]
    assert [m["role"] for m in multi] == ["user", "assistant", "user", "assistant"]  # both turns replayed

    replies, answers = [], backends.LocalBackend.answers

    def interrupted(self, conversations, on_tokens):
        for reply in answers(self, conversations, on_tokens):
            replies.append(reply)
            if len(replies) == 7:  # in the first group's first turn
                raise KeyboardInterrupt
            yield reply

    output = root / "resumed.jsonl"
    monkeypatch.setattr(backends.LocalBackend, "answers", interrupted)
    assert generate(local_args(root, base, prompts, output)) == 130
    first = read_lines(output)
    assert 0 < len(first) < 7  # the single-turn conversations among the 6 replies out: written as they finished
    assert all(record in reference for record in first)
    with open(output, "a") as f:  # a writer killed in the middle of a line
        f.write('{"id": "p-19", "sample": 1, "messa')
    monkeypatch.setattr(backends.LocalBackend, "answers", answers)
    assert generate(local_args(root, base, prompts, output)) == 0
    resumed = read_lines(output)
    assert resumed[: len(first)] == first  # append-only
    key = lambda r: (r["id"], r["sample"])  # noqa: E731
    assert sorted(resumed, key=key) == sorted(reference, key=key)  # nothing lost, nothing twice
    assert generate(local_args(root, base, prompts, output)) == 0 and read_lines(output) == resumed


def test_groups_keep_the_input_order_and_start_their_shortest_prompts_first(tmp_path):
    from data_generation.generate import Job, Writer, run_local

    class Recorder:
        batch_size, calls = 2, []  # groups of 16 conversations

        def answers(self, conversations, on_tokens):
            self.calls.append([c[-1]["content"] for c in conversations])
            yield from ((i, "ok") for i in range(len(conversations)))

    rng = torch.Generator().manual_seed(3)
    lengths = torch.randint(1, 60, (40,), generator=rng).tolist()
    jobs = [Job(f"p-{i}", 0, (f"x{i}:" + "x" * n,) + (("y" * (60 - n),) if i % 5 == 0 else ()))
            for i, n in enumerate(lengths)]
    writer = Writer(str(tmp_path / "out.jsonl"), len(jobs))
    run_local(Recorder(), jobs, None, writer)
    writer.close()
    first_turns = [call for call in Recorder.calls if call[0].startswith("x")]
    assert len(first_turns) == 3  # 16 + 16 + 8 conversations
    for call, group in zip(first_turns, (jobs[:16], jobs[16:32], jobs[32:])):
        total = {job.turns[0]: sum(map(len, job.turns)) for job in group}  # all user turns of a conversation
        assert sorted(call) == sorted(total)  # the group's conversations, no other
        assert [total[c] for c in call] == sorted(total.values())
    assert len(read_lines(tmp_path / "out.jsonl")) == 40


class FakeChatServer(BaseHTTPRequestHandler):
    """An OpenAI-compatible /v1/chat/completions that echoes and records how many requests overlap."""

    lock, in_flight, peak, requests = threading.Lock(), 0, 0, []

    def do_POST(self):  # noqa: N802
        cls = type(self)
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        with cls.lock:
            cls.in_flight += 1
            cls.peak = max(cls.peak, cls.in_flight)
            cls.requests.append((self.path, body))
        time.sleep(0.02)
        turn = sum(m["role"] == "user" for m in body["messages"])
        reply = {"choices": [{"message": {"role": "assistant",
                                          "content": f"echo {body['messages'][-1]['content']} #{turn}"}}],
                 "usage": {"completion_tokens": 3}}
        data = json.dumps(reply).encode()
        with cls.lock:
            cls.in_flight -= 1
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


@pytest.fixture
def server():
    FakeChatServer.in_flight, FakeChatServer.peak, FakeChatServer.requests = 0, 0, []
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), FakeChatServer)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


def test_openai_compatible_backend_replays_turns_with_bounded_concurrency(server, tmp_path):
    sharegpt = [{"id": f"s{i}", "conversations": [{"from": "human", "value": f"q{i}"}, {"from": "gpt", "value": "old"},
                                                   {"from": "human", "value": f"again{i}"}]} for i in range(12)]
    (tmp_path / "share.json").write_text(json.dumps(sharegpt))
    output = tmp_path / "out.jsonl"
    assert create_data.main(["--input-filename", str(tmp_path / "share.json"), "--output-filename", str(output),
                             "--url", server, "--concurrency", "3"]) == 0
    lines = read_lines(output)
    assert sorted(r["id"] for r in lines) == sorted(f"s{i}" for i in range(12))
    s5 = next(r for r in lines if r["id"] == "s5")["messages"]
    assert s5 == [{"role": "user", "content": "q5"}, {"role": "assistant", "content": "echo q5 #1"},
                  {"role": "user", "content": "again5"}, {"role": "assistant", "content": "echo again5 #2"}]
    assert all(path == "/v1/chat/completions" for path, _ in FakeChatServer.requests)
    assert len(FakeChatServer.requests) == 24 and 1 < FakeChatServer.peak <= 3
    # The second turn was sent with the model's own first answer in context, not the ShareGPT one.
    second = [b for _, b in FakeChatServer.requests if b["messages"][-1]["content"] == "again5"][0]
    assert second["messages"][1]["content"] == "echo q5 #1"
    assert generate(["--input", str(tmp_path / "share.json"), "--output", str(output), "--url", server,
                     "--model", "m"]) == 0 and len(read_lines(output)) == 12  # resumed: nothing to do


def test_local_backend_answers_are_the_base_models_own_greedy_replies(tiny):
    root, base, _ = tiny
    from transformers import AutoModelForCausalLM, AutoTokenizer

    backend = backends.LocalBackend(base, 0.0, 12, device="cpu", batch_size=2)  # the third waits for a free row
    tokenizer, model = AutoTokenizer.from_pretrained(base), AutoModelForCausalLM.from_pretrained(base)
    conversations = [[{"role": "user", "content": text}] for text in ("hello there", "a much longer question " * 6, "x")]
    conversations[1] += [{"role": "assistant", "content": "fine"}, {"role": "user", "content": "and then?"}]
    counted = []
    replies = dict(backend.answers(conversations, counted.append))
    assert sorted(replies) == [0, 1, 2]
    generated = 0
    for conversation, reply in zip(conversations, (replies[i] for i in range(3))):
        ids = tokenizer.apply_chat_template(conversation, add_generation_prompt=True, return_tensors="pt",
                                            return_dict=True)["input_ids"]
        out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=12, do_sample=False,
                             pad_token_id=tokenizer.pad_token_id or 0)[0, ids.shape[1]:]
        assert reply == tokenizer.decode(out, skip_special_tokens=True)
        generated += out.shape[0]
    assert sum(counted) == generated and len(counted) > 3  # tokens counted as they are decoded, not per reply


def test_replies_reach_max_new_tokens_beyond_512(tiny, tmp_path):
    root, base, _ = tiny
    (tmp_path / "one.jsonl").write_text(json.dumps({"id": "long", "turns": ["tell me everything"]}) + "\n")
    output = tmp_path / "out.jsonl"
    assert generate(["--input", str(tmp_path / "one.jsonl"), "--output", str(output), "--model", base,
                     "--max-new-tokens", "600", "--temperature", "0"]) == 0
    reply = read_lines(output)[0]["messages"][-1]["content"]
    assert len(reply) == 600  # one printable byte per token, and the tiny model never emits EOS


def one_prompt(path, record=None):
    path.write_text(json.dumps(record or {"id": "p-0", "turns": ["hi"]}) + "\n")
    return str(path)


def test_resume_reads_replies_that_hold_unicode_line_separators(tmp_path):
    output = tmp_path / "out.jsonl"
    done = {"id": "p-0", "sample": 0, "messages": [{"role": "user", "content": "hi"},
                                                   {"role": "assistant", "content": "one\u2028two\x85three"}]}
    output.write_text(json.dumps(done, ensure_ascii=False) + "\n", encoding="utf-8")  # as the writer writes it
    args = ["--input", one_prompt(tmp_path / "in.jsonl"), "--output", str(output), "--model", "unused"]
    assert generate(args) == 0  # nothing left to generate: the model is never loaded
    assert read_lines(output) == [done]


@pytest.mark.parametrize("option, value, says", [
    ("--max-new-tokens", "0", "must be at least 1"), ("--max-new-tokens", "-1", "must be at least 1"),
    ("--batch-size", "-2", "must be at least 1"), ("--batch-size", "0", "must be at least 1"),
    ("--samples", "0", "must be at least 1"), ("--limit", "-1", "must be at least 1"),
    ("--temperature", "-1", "must be a finite number >= 0"), ("--temperature", "nan", "must be a finite number >= 0"),
    ("--dtype", "float99", "invalid choice"), ("--device", "cuda:99", "not available on this machine"),
    ("--device", "gpu", "not a device"),
])
def test_bad_options_are_refused_with_one_line(tmp_path, capsys, option, value, says):
    args = ["--input", one_prompt(tmp_path / "in.jsonl"), "--output", str(tmp_path / "out.jsonl"), "--model", "m"]
    with pytest.raises(SystemExit) as exit:
        generate(args + [option, value])
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert exit.value.code == 2 and f"error: argument {option}: " in error and says in error
    assert not (tmp_path / "out.jsonl").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_device_cuda_without_cuda_is_refused(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit:
        generate(["--input", one_prompt(tmp_path / "in.jsonl"), "--output", str(tmp_path / "o.jsonl"), "--model", "m",
                  "--device", "cuda"])
    assert exit.value.code == 2 and "argument --device: 'cuda' is not available" in capsys.readouterr().err


def test_malformed_input_line_is_named_by_file_and_line(tmp_path):
    prompts = tmp_path / "in.jsonl"
    prompts.write_text('{"id": "a", "turns": ["x"]}\n\n{"id": "b", "turns": ["y"]}\n{"id": "c", "turns": [\n')
    with pytest.raises(SystemExit) as exit:
        generate(["--input", str(prompts), "--output", str(tmp_path / "out.jsonl"), "--model", "m"])
    assert str(exit.value).startswith(f"{prompts}, line 4: not valid JSON")
    sharegpt = tmp_path / "share.json"
    sharegpt.write_text('[\n  {"conversations": []},\n  {"conversations": [}\n]\n')
    with pytest.raises(SystemExit) as exit:
        generate(["--input", str(sharegpt), "--output", str(tmp_path / "out.jsonl"), "--model", "m"])
    assert str(exit.value).startswith(f"{sharegpt}, line 3: not valid JSON")


def test_conversations_without_a_user_turn_are_counted(tmp_path, capsys):
    sharegpt = [{"id": "a", "conversations": [{"from": "gpt", "value": "hello"}]},
                {"id": "b", "conversations": [{"from": "human", "value": "hi"}]}, {"id": "c", "turns": []}]
    (tmp_path / "share.json").write_text(json.dumps(sharegpt))
    output = tmp_path / "out.jsonl"
    output.write_text(json.dumps({"id": "b", "sample": 0, "messages": []}) + "\n")  # b is done: no model needed
    assert generate(["--input", str(tmp_path / "share.json"), "--output", str(output), "--model", "m"]) == 0
    assert f"{tmp_path / 'share.json'}: 2 of 3 records have no user turn; skipped." in capsys.readouterr().err


def test_ctrl_c_while_loading_the_model_exits_130_in_one_line(tmp_path, monkeypatch, capsys):
    import transformers

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", interrupted)
    output = tmp_path / "out.jsonl"
    assert generate(["--input", one_prompt(tmp_path / "in.jsonl"), "--output", str(output), "--model", "m"]) == 130
    assert capsys.readouterr().err.strip().splitlines()[-1] == "Interrupted while loading 'm'; nothing generated."
    assert not output.exists()


def test_held_out_prompts_are_skipped_by_id_or_first_turn(tmp_path, capsys):
    prompts = [{"id": "x-0", "turns": ["Summarise: a"]}, {"id": "x-1", "turns": ["Summarise: b", "More"]},
               {"id": "x-2", "turns": ["Summarise: c"]}, {"id": "x-3", "turns": ["Other"]}]
    (tmp_path / "prompts.jsonl").write_text("".join(json.dumps(p) + "\n" for p in prompts))
    held = [{"question_id": "x-0", "category": "s", "turns": ["reworded"]},
            {"question_id": 7, "category": "s", "turns": ["Summarise: b"]}]
    (tmp_path / "dev.jsonl").write_text("".join(json.dumps(q) + "\n" for q in held))
    output = tmp_path / "out.jsonl"
    output.write_text("".join(json.dumps({"id": i, "sample": 0, "messages": []}) + "\n" for i in ("x-2", "x-3")))
    # Everything left is already done, so no model is needed: the counts say what was held out.
    assert generate(["--input", str(tmp_path / "prompts.jsonl"), "--output", str(output), "--model", "m",
                     "--exclude", str(tmp_path / "dev.jsonl")]) == 0
    err = capsys.readouterr().err
    assert f"2 of 4 prompts held out by {tmp_path / 'dev.jsonl'}." in err
    assert "2 conversations asked, 2 already in" in err and "0 to generate" in err
