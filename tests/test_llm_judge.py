"""llm_judge/: FastChat answer files from Medusa and the baselines, speed figures, the judge's error path."""

import http.server
import importlib.util
import json
import os
import re
import socket
import subprocess
import sys
import threading
import types

import pytest
import torch

from medusa.eval.answer_speed import speed_summary
from medusa.eval.answers import answer_turns, greedy_decoder
from medusa.eval.judge import JudgeError, absolute_path_options, check_judge_api
from medusa.eval.questions import render_chat
from medusa.model import MedusaModel
from tests.fitting import fitted_medusa
from tests.tiny import tiny_model, tiny_tokenizer

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
QUESTIONS = [
    {"question_id": 7, "category": "writing", "turns": ["Hello! How are you today?", "The quick brown fox"]},
    {"question_id": 3, "category": "coding", "turns": ["def add(a, b):", "Tree attention verifies all"]},
]


def script(name):
    """An llm_judge/ script as a module (they are files, not a package)."""
    spec = importlib.util.spec_from_file_location(name, os.path.join(REPO, "llm_judge", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def fastchat_load_model_answers(answer_dir):
    """FastChat's own reader; its module imports the judge API clients, which reading does not use."""
    for client in ("openai", "anthropic"):
        sys.modules.setdefault(client, types.ModuleType(client))
    from fastchat.llm_judge.common import load_model_answers

    return load_model_answers(answer_dir)


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    """A saved tiny base + tokenizer, heads fitted to its first-turn answers (so Medusa accepts some), questions."""
    root = tmp_path_factory.mktemp("bench")
    base = tiny_model("llama", seed=3)
    base.generation_config.eos_token_id = 2
    tokenizer = tiny_tokenizer()
    base.save_pretrained(root / "base")
    tokenizer.save_pretrained(root / "base")
    first_turns = [render_chat(tokenizer, [{"role": "user", "content": q["turns"][0]}]) for q in QUESTIONS]
    model = fitted_medusa(base, first_turns, num_heads=2, steps=60, new_tokens=24)
    model.config.base_model_name_or_path = str(root / "base")
    model.save_pretrained(root / "heads")
    (root / "data").mkdir()
    (root / "data" / "question.jsonl").write_text("".join(json.dumps(q) + "\n" for q in QUESTIONS))
    return root


def common(bench, *extra):
    return ["--question-file", str(bench / "data" / "question.jsonl"), "--max-new-tokens", "24", "--device", "cpu",
            *extra]


def test_medusa_and_baselines_write_fastchat_answers_with_equal_greedy_text(bench):
    answers = bench / "data" / "model_answer"
    medusa = script("gen_model_answer_medusa")
    # Resume: the first run answers only the first question of the file; the second adds the other.
    medusa.main(common(bench, "--model", str(bench / "heads"), "--model-id", "m", "--question-end", "1"))
    first = json.loads((answers / "m.jsonl").read_text())
    assert first["question_id"] == 7
    medusa.main(common(bench, "--model", str(bench / "heads"), "--model-id", "m", "--medusa-choices", "[[0], [0, 0], [1]]"))
    baseline = script("gen_model_answer_baseline")
    baseline.main(common(bench, "--base-model", str(bench / "base"), "--mode", "greedy"))
    baseline.main(common(bench, "--model", str(bench / "heads"), "--mode", "hf", "--model-id", "h"))

    loaded = fastchat_load_model_answers(str(answers))
    assert set(loaded) == {"m", "base-greedy", "h"}
    lines = (answers / "m.jsonl").read_text().splitlines()
    assert [json.loads(line)["question_id"] for line in lines] == [3, 7]  # sorted, one line per question
    assert loaded["m"][7]["answer_id"] == first["answer_id"]  # not answered again
    for model_id, by_question in loaded.items():
        assert set(by_question) == {3, 7}
        for answer in by_question.values():
            assert answer["model_id"] == model_id and answer["tstamp"] > 0
            (choice,) = answer["choices"]
            assert choice["index"] == 0 and len(choice["turns"]) == 2
            for key in ("new_tokens", "steps", "wall_time"):
                assert len(choice[key]) == 2 and all(v > 0 for v in choice[key])
            assert all(1 <= n <= 24 for n in choice["new_tokens"])
    texts = {m: {q: a["choices"][0]["turns"] for q, a in by_question.items()} for m, by_question in loaded.items()}
    assert texts["m"] == texts["base-greedy"] == texts["h"]
    assert any(t for turns in texts["m"].values() for t in turns)
    for q in (3, 7):
        plain = loaded["base-greedy"][q]["choices"][0]
        assert plain["steps"] == plain["new_tokens"]  # one token per step
        assert loaded["m"][q]["choices"][0]["new_tokens"] == plain["new_tokens"]
    medusa_choices = [loaded["m"][q]["choices"][0] for q in (3, 7)]
    assert sum(sum(c["steps"]) for c in medusa_choices) < sum(sum(c["new_tokens"]) for c in medusa_choices)


def test_second_turn_sees_the_first_turn_and_its_answer(bench):
    """The second turn's prompt is the chat of turn 1, the answer to it and turn 2: checked by re-decoding it."""
    model = MedusaModel.from_pretrained(str(bench / "heads"))
    tokenizer = model.get_tokenizer()
    decode = greedy_decoder(model, max_new_tokens=12)
    prompts = []

    def recording(input_ids):
        prompts.append(input_ids)
        return decode(input_ids)

    record = answer_turns(recording, tokenizer, QUESTIONS[0]["turns"], torch.device("cpu"))
    expected = render_chat(tokenizer, [{"role": "user", "content": QUESTIONS[0]["turns"][0]},
                                       {"role": "assistant", "content": record["turns"][0]},
                                       {"role": "user", "content": QUESTIONS[0]["turns"][1]}])
    assert torch.equal(prompts[1], expected)


def answer_line(qid, new_tokens, steps, wall_time):
    return {"question_id": qid, "answer_id": "x", "model_id": "m", "tstamp": 1.0,
            "choices": [{"index": 0, "turns": ["a", "b"], "new_tokens": new_tokens, "steps": steps, "wall_time": wall_time}]}


def test_show_speed_figures_from_hand_made_answer_files(tmp_path, capsys):
    medusa = {7: answer_line(7, [30, 10], [10, 5], [1.0, 1.0]), 3: answer_line(3, [20, 20], [8, 12], [0.5, 0.5])}
    baseline = {7: answer_line(7, [30, 10], [30, 10], [4.0, 4.0]), 3: answer_line(3, [20, 20], [20, 20], [1.0, 1.0]),
                99: answer_line(99, [5, 5], [5, 5], [1.0, 1.0])}  # not in the medusa file: left out
    summary = speed_summary(medusa, baseline, QUESTIONS)
    writing, coding = summary["categories"]["writing"], summary["categories"]["coding"]
    assert writing == pytest.approx({"questions": 1, "medusa_tok_s": 20.0, "baseline_tok_s": 5.0,
                                     "medusa_tokens_per_step": 40 / 15, "baseline_tokens_per_step": 1.0, "speedup": 4.0})
    assert coding["medusa_tok_s"] == pytest.approx(40.0) and coding["speedup"] == pytest.approx(2.0)
    overall = summary["overall"]
    assert overall["questions"] == 2
    assert overall["medusa_tok_s"] == pytest.approx(80 / 3) and overall["baseline_tok_s"] == pytest.approx(8.0)
    assert overall["speedup"] == pytest.approx(80 / 24) and overall["medusa_tokens_per_step"] == pytest.approx(80 / 35)

    questions = tmp_path / "q.jsonl"
    questions.write_text("".join(json.dumps(q) + "\n" for q in QUESTIONS))
    for name, answers in (("m", medusa), ("b", baseline)):
        (tmp_path / f"{name}.jsonl").write_text("".join(json.dumps(a) + "\n" for a in answers.values()))
    script("show_speed").main(["--medusa", str(tmp_path / "m.jsonl"), "--baseline", str(tmp_path / "b.jsonl"),
                               "--question-file", str(questions), "--output", str(tmp_path / "speed.json")])
    assert json.loads((tmp_path / "speed.json").read_text()) == json.loads(json.dumps(summary))
    assert "overall" in capsys.readouterr().out
    with pytest.raises(ValueError, match="no question"):
        speed_summary(medusa, baseline, [{"question_id": 1, "category": "x", "turns": ["?"]}])


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def fake_api():
    """A local server answering every GET with the status in ``status[0]``."""
    status = [200]

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(status[0])
            self.end_headers()
            self.wfile.write(b"{}")

        def log_message(self, *args):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}/v1", status
    server.shutdown()


def test_judge_api_check(monkeypatch, fake_api):
    base, status = fake_api
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    with pytest.raises(JudgeError, match="OPENAI_API_KEY: it is not set"):
        check_judge_api("gpt-4")
    with pytest.raises(JudgeError, match="ANTHROPIC_API_KEY"):
        check_judge_api("claude-2")
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    monkeypatch.setenv("OPENAI_API_BASE", f"http://127.0.0.1:{free_port()}/v1")
    with pytest.raises(JudgeError, match="is not reachable"):
        check_judge_api("gpt-4", timeout=2)
    monkeypatch.setenv("OPENAI_API_BASE", base)
    check_judge_api("gpt-4")
    status[0] = 401
    with pytest.raises(JudgeError, match=r"refused the key in OPENAI_API_KEY \(HTTP 401\)"):
        check_judge_api("gpt-4")


def test_gen_judgment_fails_in_one_line_without_a_judge(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("OPENAI_API_KEY", "ANTHROPIC_API_KEY")}
    env["PYTHONPATH"] = REPO
    run = subprocess.run([sys.executable, os.path.join(REPO, "llm_judge", "gen_judgment.py"), "--model-list", "m"],
                         env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert run.returncode == 1
    assert run.stderr.strip() == "error: The judge 'gpt-4' needs OPENAI_API_KEY: it is not set, so no judge API can be called."
    assert not (tmp_path / "data").exists()


def test_absolute_path_options(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    argv = ["--judge-file", "j.jsonl", "--mode", "single", "--input-file=r.jsonl", "--model-list", "a"]
    assert absolute_path_options(argv, ("--judge-file", "--input-file")) == [
        "--judge-file", str(tmp_path / "j.jsonl"), "--mode", "single", f"--input-file={tmp_path / 'r.jsonl'}",
        "--model-list", "a"]


def test_missing_judge_packages_are_named(monkeypatch):
    import medusa.eval.judge as judge

    missing = {"anthropic", "pandas"}
    monkeypatch.setattr(judge.importlib.util, "find_spec", lambda name: None if name in missing else object())
    monkeypatch.setattr(judge.importlib.metadata, "version", lambda name: "1.3.0")
    with pytest.raises(JudgeError, match=r"needs anthropic, openai<1: pip install 'medusa-llm\[judge\]'$"):
        judge.check_packages("openai", "anthropic")
    monkeypatch.setattr(judge.importlib.metadata, "version", lambda name: "0.28.1")
    with pytest.raises(JudgeError, match=r"needs pandas: pip install 'medusa-llm\[judge\]'$"):
        judge.check_packages("openai", "pandas")
    missing.clear()
    judge.check_packages("openai", "anthropic", "pandas")


def test_question_and_answer_files_are_read_by_newline_only(tmp_path):
    from medusa.eval.answers import read_answers
    from medusa.eval.questions import load_questions

    questions = tmp_path / "question.jsonl"
    lines = [json.dumps({"question_id": 1, "turns": ["a\u2028b\x85c"]}, ensure_ascii=False), "", '{"question_id": 2,']
    questions.write_text("\n".join(lines) + "\n", encoding="utf-8")
    with pytest.raises(ValueError) as error:
        load_questions(str(questions))
    assert str(error.value).startswith(f"{questions}, line 3: not valid JSON")
    questions.write_text(lines[0] + "\n", encoding="utf-8")
    assert load_questions(str(questions)) == [{"question_id": 1, "turns": ["a\u2028b\x85c"]}]
    answers = tmp_path / "answers.jsonl"
    answers.write_text(lines[0] + "\n" + lines[2], encoding="utf-8")  # the last line cut short by a kill
    assert read_answers(str(answers)) == {1: {"question_id": 1, "turns": ["a\u2028b\x85c"]}}


@pytest.mark.parametrize("name, extra", [("gen_judgment", "openai<1, anthropic"), ("show_result", "pandas")])
def test_help_works_without_the_judge_packages_and_a_run_names_them(name, extra, monkeypatch, capsys):
    import medusa.eval.judge as judge

    monkeypatch.setattr(judge.importlib.util, "find_spec", lambda module: None)
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    monkeypatch.setattr(judge, "check_judge_api", lambda model: None)
    main = script(name).main
    main(["--help"])
    out = capsys.readouterr().out
    assert out.startswith(f"FastChat's MT-bench {'judgment' if name == 'gen_judgment' else 'scores'}")
    assert out.endswith(f"needs {extra}: pip install 'medusa-llm[judge]'\n")
    with pytest.raises(JudgeError, match=re.escape(f"needs {extra}: pip install 'medusa-llm[judge]'")):
        main(["--model-list", "m"])
