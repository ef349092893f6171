"""The chat CLI driven through stdin (programmatic style), a pseudo-terminal (simple, rich) and main()."""

import io
import json
import os
import re
import subprocess
import sys
from importlib.util import find_spec

import pexpect
import pytest
import torch
import transformers

from medusa import demo
from medusa.inference import cli
from medusa.model import MedusaConfig, MedusaModel
from medusa.model.medusa_model import shipped_tree
from tests.demo_helpers import HAIKU_GREEDY_TEXT, HAIKU_PROMPT, SMALL_TREE, fresh_demo_heads, one_thread
from tests.test_medusa2_checkpoint import write_medusa2
from tests.tiny import tiny_model, tiny_tokenizer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
END = " __END_OF_A_MESSAGE_47582648__\n"
STATS = re.compile(r"\[(\d+) tokens in [\d.]+ s: [\d.]+ tokens/s, [\d.]+ tokens/step over \d+ steps\]")


@pytest.fixture(scope="module")
def demo_heads(tmp_path_factory):
    """Fresh two-head Medusa heads on the demo base (their config names it symbolically)."""
    return fresh_demo_heads(demo.demo_base_dir(), str(tmp_path_factory.mktemp("demo") / "heads"))


@pytest.fixture(scope="module")
def tiny_heads(tmp_path_factory):
    """Two fresh heads on a tiny random Llama with a 96-token context, saved with its tokenizer."""
    root = tmp_path_factory.mktemp("tiny")
    tiny_model(max_position_embeddings=96).save_pretrained(root / "base")
    tiny_tokenizer().save_pretrained(root / "base")
    base = tiny_model(max_position_embeddings=96)
    config = MedusaConfig(medusa_num_heads=2, base_model_name_or_path=str(root / "base"))
    MedusaModel(base, config).save_pretrained(root / "heads")
    return str(root / "heads")


@pytest.fixture(scope="module")
def vicuna_named_heads(tmp_path_factory):
    """Heads on a tiny base saved as ``.../vicuna-tiny`` with a tokenizer that has no chat template."""
    root = tmp_path_factory.mktemp("vicuna")
    base = tiny_model()
    base.save_pretrained(root / "vicuna-tiny")
    tokenizer = tiny_tokenizer()
    tokenizer.chat_template = None
    tokenizer.save_pretrained(root / "vicuna-tiny")
    MedusaModel(base, MedusaConfig(medusa_num_heads=2, base_model_name_or_path=str(root / "vicuna-tiny"))).save_pretrained(
        root / "heads")
    return str(root / "heads")


def _env(**extra):
    # Single-threaded torch: the test machine's cores are shared, and oversubscribed threads spin.
    return dict(os.environ, PYTHONPATH=ROOT, OMP_NUM_THREADS="1", **extra)


def _run_main(argv, monkeypatch, capsys, stdin=""):
    monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
    try:
        with one_thread():
            code = cli.main(argv)
    finally:  # main() quiets transformers for the chat; give the other tests their warnings back
        transformers.logging.set_verbosity_warning()
        transformers.logging.enable_progress_bar()
    out, err = capsys.readouterr()
    return code, out, err


def _one_line_error(code, err, pattern):
    assert code != 0
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and re.search(pattern, lines[0]), err


# ------------------------------------------------------------------------------------ chat with the demo model
@pytest.mark.slow
def test_programmatic_two_turns_regen_remove_save_reset_load(demo_heads, tmp_path):
    saved, after_reset = tmp_path / "chat.json", tmp_path / "empty.json"
    messages = [HAIKU_PROMPT, "!!regen", "And one about the moon.", f"!!save {saved}", "!!remove", "!!reset",
                f"!!save {after_reset}", f"!!load {saved}"]
    result = subprocess.run(
        [sys.executable, "-m", "medusa.inference.cli", "--model", demo_heads, "--base-model", demo.demo_base_dir(),
         "--style", "programmatic", "--max-new-tokens", "16", "--medusa-choices", SMALL_TREE, "--debug"],
        input="".join(m + END for m in messages), capture_output=True, text=True, env=_env(), cwd=tmp_path, timeout=300)
    assert result.returncode == 0, result.stderr
    replies = re.findall(r"\[!OP:assistant\]: (.*?)\n\[!OP:", result.stdout, re.S)
    # Untrained heads change nothing at temperature 0: the reply is the base model's greedy one, twice.
    assert replies[:2] == [HAIKU_GREEDY_TEXT, HAIKU_GREEDY_TEXT]
    assert replies[2] and replies[2] != HAIKU_GREEDY_TEXT

    history = json.loads(saved.read_text())["messages"]
    assert [m["role"] for m in history] == ["user", "assistant"] * 2  # !!regen replaced the first reply
    assert [history[0]["content"], history[1]["content"], history[3]["content"]] == [HAIKU_PROMPT, *replies[1:3]]
    assert json.loads(after_reset.read_text())["messages"] == []
    # !!load shows the loaded history.
    assert result.stdout.rstrip().endswith(f"[!OP:assistant]: {replies[2]}")

    stats = STATS.findall(result.stderr)
    assert stats == ["16", "16", "16"], result.stderr
    assert len(re.findall(r"\[accept lengths per step: \[[\d, ]+\]\]", result.stderr)) == 3
    assert "[removed the last message]" in result.stderr and "[new conversation]" in result.stderr


# The CLI with each reply held after its first step until Ctrl-C arrives: an interrupt test must not race the
# reply (on a loaded machine the whole 39-token answer once finished before the interrupt was sent).
HELD_REPLIES_CLI = """
import sys, time
from medusa.inference import cli
from medusa.model import MedusaModel

generate = MedusaModel.medusa_generate

def held(self, *args, **kwargs):
    stream = generate(self, *args, **kwargs)
    yield next(stream)
    time.sleep(600)  # Ctrl-C raises KeyboardInterrupt here
    yield from stream

MedusaModel.medusa_generate = held
sys.exit(cli.main())
"""


def _spawn(style, *args, max_new_tokens="200", held_replies=False):
    program = ["-c", HELD_REPLIES_CLI] if held_replies else ["-m", "medusa.inference.cli"]
    child = pexpect.spawn(sys.executable, [*program, "--style", style, "--max-new-tokens", max_new_tokens,
                                           "--medusa-choices", SMALL_TREE, *args],
                          env=_env(PROMPT_TOOLKIT_NO_CPR="1", TERM="xterm"), cwd=ROOT, encoding="utf-8",
                          timeout=240, dimensions=(40, 120))
    return child


@pytest.mark.slow
def test_simple_style_streams_and_ctrl_c_stops_only_the_reply(demo_heads):
    child = _spawn("simple", "--model", demo_heads, held_replies=True)
    child.expect_exact("user: ")
    child.sendline(HAIKU_PROMPT)
    child.expect_exact("assistant: The")  # the first step is on screen before the reply is done
    child.sendintr()
    child.expect_exact("[reply interrupted]")
    child.expect(STATS)
    assert int(child.match.group(1)) <= 3  # the reply stopped after its first step (SMALL_TREE: at most 3 tokens)
    child.expect_exact("user: ")
    child.sendline("!!regen")
    child.expect_exact("assistant: The")
    child.sendintr()
    child.expect_exact("[reply interrupted]")
    child.expect_exact("user: ")
    child.sendline("!!exit")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0


@pytest.mark.slow
def test_rich_style_two_turns_and_reset(demo_heads):
    child = _spawn("rich", "--model", demo_heads, "--base-model", demo.demo_base_dir(), "--no-history",
                   max_new_tokens="8")
    for message in (HAIKU_PROMPT, "!!reset", HAIKU_PROMPT):
        child.expect_exact("user:")
        child.sendline(message)
        if message == "!!reset":
            child.expect_exact("[new conversation]")
        else:
            child.expect_exact("The waves of the sea, a silent")  # --no-history: the same answer twice
            child.expect(STATS)
    child.expect_exact("user:")
    # Not Ctrl-D: sent before prompt_toolkit switches the terminal to raw mode, it would end the input stream.
    child.sendline("!!exit")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0


@pytest.mark.slow
def test_default_model_is_the_demo(demo_heads, monkeypatch, capsys):
    monkeypatch.setattr(demo, "DEMO_HEADS_DIR", demo_heads)
    code, out, err = _run_main(["--style", "programmatic", "--max-new-tokens", "16", "--medusa-choices", SMALL_TREE],
                               monkeypatch, capsys, stdin=HAIKU_PROMPT + END)
    assert code == 0, err
    assert f"[!OP:assistant]: {HAIKU_GREEDY_TEXT}\n" in out
    assert STATS.search(err)


def _pipe(heads, stdin: bytes, tmp_path):
    """The simple style with its input piped in, as ``printf ... | python -m medusa.inference.cli`` runs it."""
    # One copy chain of 4: the tiny model's 96-token context holds two turns and the tree.
    return subprocess.run([sys.executable, "-m", "medusa.inference.cli", "--model", heads, "--max-new-tokens", "4",
                           "--copy-chains", "1", "--copy-depth", "4"],
                          input=stdin, capture_output=True, env=_env(), cwd=tmp_path, timeout=120)


def test_piped_input_is_echoed_after_each_prompt(tiny_heads, tmp_path):
    result = _pipe(tiny_heads, b"hello\nhi again\n", tmp_path)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.decode().split("\n")
    assert [lines[0], lines[3], lines[6:]] == ["user: hello", "user: hi again", ["user: ", ""]]  # ends with a newline
    assert lines[1].startswith("assistant: ") and lines[4].startswith("assistant: ")
    assert STATS.fullmatch(lines[2]) and STATS.fullmatch(lines[5])


@pytest.mark.parametrize("argv, message", [(["--copy-chains", "-1"], "--copy-chains must be a non-negative integer"),
                                           (["--copy-chains", "1", "--copy-depth", "0"],
                                            "--copy-depth must be at least 1 when --copy-chains > 0")])
def test_bad_copy_branch_options_are_refused(argv, message, capsys):
    with pytest.raises(SystemExit) as exit:
        cli.main(argv)
    assert exit.value.code == 2 and message in capsys.readouterr().err


def test_bytes_that_are_not_utf8_are_replaced_and_the_chat_goes_on(tiny_heads, tmp_path):
    result = _pipe(tiny_heads, b"caf\xe9\nhi\n!!save chat.json\n", tmp_path)
    assert result.returncode == 0, result.stderr
    out = result.stdout.decode()
    assert "user: caf\ufffd\n[bytes of the message that are not UTF-8 were replaced by \ufffd]\n" in out
    assert len(STATS.findall(out)) == 2
    history = json.loads((tmp_path / "chat.json").read_text())["messages"]
    assert [m["content"] for m in history if m["role"] == "user"] == ["caf\ufffd", "hi"]


# ------------------------------------------------------------------------------------ documented commands
def documented_programs(*docs: str) -> list[list[str]]:
    """The programs of every ``python ...`` / ``python -m ...`` command in the docs' shell blocks and inline
    code (``["-m", "medusa.export"]``, ``["llm_judge/show_result.py"]``), once each; ``pip`` and ``torchrun``
    parts of a line are not ours to run."""
    programs = []
    for doc in docs:
        with open(os.path.join(ROOT, doc)) as f:
            text = f.read()
        shell_lines = [line for block in re.findall(r"```(?:bash|sh)?\n(.*?)```", text, re.S) for line in block.splitlines()]
        inline = re.findall(r"`([^`\n]+)`", re.sub(r"```.*?```", "", text, flags=re.S))
        for command in shell_lines + inline:
            for part in command.split("&&"):
                words = part.split()
                if words[:1] == ["python"]:
                    program = words[1:3] if words[1] == "-m" else words[1:2]
                    programs += [program] if program not in programs else []
    return programs


@pytest.mark.parametrize("program", documented_programs("README.md", "llm_judge/README.md"), ids=" ".join)
def test_documented_command_runs_as_written(program, tmp_path):
    """``--help`` of each documented command, from the repository root, with only the installed package
    (``medusa``) importable: what a user who ran ``pip install -e .`` gets."""
    (tmp_path / "medusa").symlink_to(os.path.join(ROOT, "medusa"))
    result = subprocess.run([sys.executable, *program, "--help"], capture_output=True, text=True, cwd=ROOT,
                            env=dict(_env(), PYTHONPATH=str(tmp_path)), timeout=120)
    assert result.returncode == 0, result.stderr


# ------------------------------------------------------------------------------------ errors: one line
def test_missing_model_dir_is_one_line_from_the_command_line(tmp_path):
    result = subprocess.run([sys.executable, "-m", "medusa.inference.cli", "--model", str(tmp_path / "nope")],
                            capture_output=True, text=True, env=_env(), timeout=120)
    _one_line_error(result.returncode, result.stderr, r"--model .*nope: no such directory")


@pytest.mark.parametrize("argv, variant, constant", [([], "medusa1", "DEMO_HEADS_DIR"),
                                                     (["--demo", "medusa2"], "medusa2", "DEMO_MEDUSA2_DIR"),
                                                     (["--demo", "medusa2", "--base-model", "."], "medusa2",
                                                      "DEMO_MEDUSA2_DIR")])
def test_missing_demo_checkpoint(argv, variant, constant, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(demo, constant, str(tmp_path / "missing"))
    code, _, err = _run_main(argv, monkeypatch, capsys)
    _one_line_error(code, err, re.escape(f"the {variant} demo checkpoint is missing from this installation "
                                         f"({tmp_path / 'missing'})"))


def test_missing_medusa2_demo_is_one_line_from_the_command_line(tmp_path):
    """The packaged path itself, while the checkpoint has not shipped."""
    if os.path.isdir(demo.DEMO_MEDUSA2_DIR):
        pytest.skip("the Medusa-2 demo ships in this checkout")
    result = subprocess.run([sys.executable, "-m", "medusa.inference.cli", "--demo", "medusa2"],
                            capture_output=True, text=True, env=_env(), timeout=120)
    _one_line_error(result.returncode, result.stderr, r"the medusa2 demo checkpoint is missing .*demo_medusa2\)")


def test_demo_and_model_together_are_refused(tiny_heads, capsys):
    with pytest.raises(SystemExit) as exit:
        cli.main(["--demo", "medusa2", "--model", tiny_heads])
    err = capsys.readouterr().err
    assert exit.value.code == 2 and "--demo picks a shipped checkpoint and --model names another" in err


@pytest.mark.parametrize("argv", [["--demo", "medusa2"], ["--demo", "medusa2", "--base-model", "BASE"]])
def test_demo_medusa2_chats_with_the_medusa2_checkpoint(argv, tmp_path, monkeypatch, capsys):
    reference = write_medusa2(tmp_path / "m2", seed=7)
    base = str(tmp_path / "base-llama")
    monkeypatch.setattr(demo, "DEMO_MEDUSA2_DIR", str(tmp_path / "m2"))
    monkeypatch.setattr(demo, "demo_base_dir", lambda: base)
    loaded = []
    from_pretrained = cli.MedusaModel.from_pretrained
    monkeypatch.setattr(cli.MedusaModel, "from_pretrained",
                        lambda path, **k: loaded.append((path, from_pretrained(path, **k))) or loaded[-1][1])
    argv = [base if a == "BASE" else a for a in argv]
    code, out, err = _run_main([*argv, "--style", "programmatic", "--max-new-tokens", "4"], monkeypatch, capsys,
                               stdin="hello" + END)
    assert code == 0, err
    assert STATS.search(err) and "[!OP:assistant]: " in out
    [(path, model)] = loaded
    assert path == str(tmp_path / "m2") and model.adapter is not None
    for name, p in model.base_model.named_parameters():  # the fine-tuned backbone, merged as peft merges
        torch.testing.assert_close(p, reference.get_parameter(name), rtol=1e-5, atol=1e-6, msg=name)


def test_checkpoint_without_heads(tiny_heads, monkeypatch, capsys):
    plain = os.path.join(os.path.dirname(tiny_heads), "base")
    code, _, err = _run_main(["--model", plain], monkeypatch, capsys)
    _one_line_error(code, err, "is a plain model, not a Medusa checkpoint")


@pytest.mark.parametrize("tree, message", [("[[0], [0, 0], [0, 0, 0]]", "depth 3 but the model has only 2 Medusa heads"),
                                           ("no_such_tree", "neither a preset"),
                                           ("[[0, 0]]", "missing its parent")])
def test_tree_that_does_not_fit_the_heads(tiny_heads, tree, message, monkeypatch, capsys):
    code, _, err = _run_main(["--model", tiny_heads, "--medusa-choices", tree], monkeypatch, capsys)
    _one_line_error(code, err, re.escape(message))


@pytest.mark.parametrize("flag", ["--load-in-8bit", "--load-in-4bit"])
def test_quantisation_without_bitsandbytes(tiny_heads, flag, monkeypatch, capsys):
    monkeypatch.setattr(cli, "find_spec", lambda name: None if name == "bitsandbytes" else find_spec(name))
    code, _, err = _run_main(["--model", tiny_heads, flag], monkeypatch, capsys)
    _one_line_error(code, err, re.escape(f"{flag} needs bitsandbytes: pip install 'medusa-llm[quant]'"))


@pytest.mark.parametrize("flag, layer", [("--load-in-8bit", "Linear8bitLt"), ("--load-in-4bit", "Linear4bit")])
def test_quantised_base_chats_on_cpu(tiny_heads, flag, layer, monkeypatch, capsys):
    loaded = []
    from_pretrained = cli.MedusaModel.from_pretrained
    monkeypatch.setattr(cli.MedusaModel, "from_pretrained",
                        lambda *a, **k: loaded.append(from_pretrained(*a, **k)) or loaded[-1])
    code, out, err = _run_main(["--model", tiny_heads, flag, "--style", "programmatic", "--max-new-tokens", "6"],
                               monkeypatch, capsys, stdin="hello" + END)
    assert code == 0, err
    attention = loaded[0].base_model.model.layers[0].self_attn
    assert type(attention.q_proj).__name__ == layer  # the base really is quantised
    assert out.strip()  # and it answered


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA device is present")
def test_cuda_without_a_device(tiny_heads, monkeypatch, capsys):
    code, _, err = _run_main(["--model", tiny_heads, "--device", "cuda"], monkeypatch, capsys)
    _one_line_error(code, err, "no CUDA device")


def test_prompt_longer_than_the_context_is_reported_and_the_chat_goes_on(tiny_heads, tmp_path, monkeypatch, capsys):
    saved = tmp_path / "chat.json"
    stdin = "".join(m + END for m in ["def add(a, b): return a + b " * 20, "hi", f"!!save {saved}"])
    code, out, err = _run_main(["--model", tiny_heads, "--style", "programmatic", "--max-new-tokens", "4"],
                               monkeypatch, capsys, stdin=stdin)
    assert code == 0
    assert re.search(r"^error: prompt \(\d+ tokens\) \+ max_new_tokens \(4\) \+ tree \(\d+\) exceeds the model's "
                     r"context of 96 tokens\.$", err, re.M), err
    assert len(STATS.findall(err)) == 1  # the short prompt was answered
    assert [m["content"] for m in json.loads(saved.read_text())["messages"]][0] == "hi"
    assert out.count("[!OP:assistant]: ") == 1


def test_sampling_options_reach_the_decoder_and_seeds_repeat(tiny_heads, monkeypatch, capsys):
    replies = []
    for sampling, seed in (("lossless", 5), ("lossless", 5), ("typical", 5)):
        code, out, err = _run_main(["--model", tiny_heads, "--style", "programmatic", "--max-new-tokens", "12",
                                    "--temperature", "0.9", "--top-k", "50", "--top-p", "0.95", "--sampling", sampling,
                                    "--seed", str(seed)], monkeypatch, capsys, stdin="hello" + END)
        assert code == 0, err
        assert len(STATS.findall(err)) == 1
        replies.append(out)
    assert replies[0] == replies[1]


@pytest.mark.parametrize("argv, message", [
    (["--temperature", "nan"], "temperature must be a finite number >= 0; got nan."),
    (["--temperature", "inf"], "temperature must be a finite number >= 0; got inf."),
    (["--temperature", "-1"], "temperature must be a finite number >= 0; got -1.0."),
    (["--temperature", "0.7", "--top-p", "nan"], "top_p must be in (0, 1]; got nan."),
    (["--temperature", "0.7", "--top-k", "-1"], "top_k must be >= 0 (0 = no top-k cut); got -1."),
    (["--sampling", "typical"], "sampling='typical' needs temperature > 0; got temperature 0.0."),
    (["--posterior-threshold", "0.2"], "--posterior-threshold and --posterior-alpha apply to --sampling typical only, "
                                       "not to greedy decoding"),
    (["--temperature", "0.7", "--posterior-alpha", "0.5"], "--posterior-threshold and --posterior-alpha apply to "
                                                            "--sampling typical only, not to lossless decoding"),
    (["--temperature", "0.7", "--compile-step", "now"], "--compile-step now needs greedy decoding or --sampling "
                                                        "typical (lossless sampling walks the tree on the host)"),
    (["--temperature", "0.7", "--compile-step", "background"], "--compile-step background needs greedy decoding or "
                                                               "--sampling typical (lossless sampling walks the tree "
                                                               "on the host)"),
])
def test_bad_sampling_options_are_one_line_before_loading(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.parse_args(argv)
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.splitlines()[-1] == f"python -m medusa.inference.cli: error: {message}"


def test_typical_posterior_options_reach_the_decoder(tiny_heads):
    args = cli.parse_args(["--model", tiny_heads, "--temperature", "0.7", "--sampling", "typical",
                           "--posterior-threshold", "0.2"])
    chat = cli.Chat(cli.load_model(args), args, cli.STYLES["simple"]())
    assert chat.gen_kwargs["posterior_threshold"] == 0.2
    assert "posterior_alpha" not in chat.gen_kwargs and "compile_step" not in chat.gen_kwargs  # unset: the defaults
    for argv, value in ((["--compile-step", "background"], "'background'"), (["--compile-step", "now"], "True"),
                        (["--compile-step", "off"], "False"), (["--temperature", "0.7", "--compile-step", "off"], "False")):
        args = cli.parse_args(["--model", tiny_heads] + argv)
        assert repr(cli.Chat(chat.model, args, cli.STYLES["simple"]()).gen_kwargs["compile_step"]) == value


def test_the_compiler_is_imported_before_the_first_prompt_only_where_the_step_compiles(tiny_heads, monkeypatch):
    imported = []
    monkeypatch.setattr(cli, "import_compiler", lambda: imported.append(1))
    model = None
    for argv, compiles in (([], False),  # a CPU model: compile_step's default is off there
                           (["--compile-step", "now"], True),
                           (["--temperature", "0.7"], False),  # lossless sampling is never compiled
                           (["--temperature", "0.7", "--sampling", "typical", "--compile-step", "background"], True)):
        args = cli.parse_args(["--model", tiny_heads] + argv)
        model = model or cli.load_model(args)
        imported.clear()
        cli.Chat(model, args, cli.STYLES["simple"]())
        assert bool(imported) == compiles, argv


def test_trees_shipped_beside_the_heads_are_the_default(tmp_path):
    assert shipped_tree(str(tmp_path), torch.device("cpu")) is None
    (tmp_path / "tree.json").write_text("[[0], [0, 0]]")
    assert shipped_tree(str(tmp_path), torch.device("cpu")) == str(tmp_path / "tree.json")
    (tmp_path / "cpu_tree.json").write_text("[[0]]")
    assert shipped_tree(str(tmp_path), torch.device("cpu")) == str(tmp_path / "cpu_tree.json")
    assert shipped_tree(str(tmp_path), torch.device("cuda")) == str(tmp_path / "tree.json")
    assert os.path.isfile(os.path.join(demo.DEMO_HEADS_DIR, "cpu_tree.json"))


def test_unknown_conversation_template(tiny_heads, monkeypatch, capsys):
    code, _, err = _run_main(["--model", tiny_heads, "--conv-template", "vicuna"], monkeypatch, capsys)
    _one_line_error(code, err, r"Unknown conversation template 'vicuna' \(did you mean vicuna_v1\.1")


# ------------------------------------------------------------------------------------ conversation templates
def test_model_without_chat_template_gets_fastchats_template(vicuna_named_heads, monkeypatch, capsys):
    code, out, err = _run_main(["--model", vicuna_named_heads, "--style", "programmatic", "--max-new-tokens", "3",
                                "--debug"], monkeypatch, capsys, stdin="hi" + END)
    assert code == 0, err
    assert "conversation: vicuna_v1.1]" in err and "[prompt: " in err
    assert out.count("[!OP:USER]: ") == 1 and out.count("[!OP:ASSISTANT]: ") == 1


def test_stop_string_ends_the_reply():
    outputs = [{"text": t, "num_new_tokens": n, "accept_length": 0} for n, t in
               enumerate(["Sure", "Sure.\n###", "Sure.\n### Human: more"], start=1)]
    stats = cli.ReplyStats()
    assert [o["text"] for o in cli._tracked(iter(outputs), stats, ["###"])] == ["Sure", "Sure.\n"]
    assert (stats.text, stats.tokens, stats.accept_lengths) == ("Sure.\n", 2, [0, 0])


def test_dtype_and_device_reach_the_model(tiny_heads, monkeypatch, capsys):
    code, _, err = _run_main(["--model", tiny_heads, "--style", "programmatic", "--dtype", "bfloat16", "--device", "cpu",
                              "--debug"], monkeypatch, capsys)
    assert code == 0, err
    assert "2 Medusa heads on llama, " in err and "cpu, torch.bfloat16; conversation: the tokenizer's chat template]" in err


@pytest.mark.skipif(find_spec("bitsandbytes") is None, reason="bitsandbytes is not installed")
def test_bitsandbytes_cpu_kernel_fallback_warning_stays_out_of_the_chat(caplog):
    args = cli.parse_args(["--load-in-4bit", "--device", "cpu"])
    assert "quantization_config" in cli.hf_kwargs(args)
    import logging

    with caplog.at_level(logging.WARNING):
        logging.getLogger("bitsandbytes.backends.cpu.ops").warning("Failed to load CPU gemm_4bit_forward from kernels-community")
    assert "gemm_4bit_forward" not in caplog.text
