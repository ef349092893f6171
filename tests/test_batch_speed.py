"""benchmarks/batch_speed.py on CPU: the GPU benchmark's code paths, with exactness checks that fp32 allows."""

import json

import pytest

from benchmarks.batch_speed import main
from medusa.model import attention
from tests.test_heads_accuracy import command_line


@pytest.mark.parametrize("continuous, fold_gqa", [(False, False), (True, True)])
def test_batch_benchmark_runs_and_medusa_rows_equal_the_greedy_loops(tmp_path, continuous, fold_gqa, monkeypatch):
    monkeypatch.setattr(attention, "FOLD_MIN_BYTES", 0)  # with --fold-gqa, fold even these tiny batches
    args = command_line(tmp_path)  # tiny heads + base + 3 questions, on CPU
    heads, questions = args[args.index("--model") + 1], args[args.index("--questions") + 1]
    main(["--model", heads, "--questions", questions, "--device", "cpu", "--batch-sizes", "1,2",
          "--max-new-tokens", "12", "--output", str(tmp_path / "out.json")] + (["--continuous"] if continuous else [])
         + (["--fold-gqa"] if fold_gqa else []))
    output = json.loads((tmp_path / "out.json").read_text())
    assert output["fold_gqa"] == fold_gqa
    results = output["results"]
    assert [r["batch_size"] for r in results] == [1, 2]
    for r in results:
        assert r["continuous"] == continuous and r["rows"] == (16 if continuous else {1: 16, 2: 2}[r["batch_size"]])
        if continuous:  # rows end at EOS, and the batch runs short once the queue is empty
            assert 0 < r["greedy"]["tokens_per_step"] <= 1.0
        else:
            assert r["greedy"]["tokens_per_step"] == pytest.approx(1.0)
        assert r["group"] == "all"
        for mode in ("default", "fixed"):  # with trees that follow acceptance, and with the trees fixed
            assert r[mode]["identical_rows"] == 1.0  # fp32: Medusa equals the greedy loop row for row
            assert r[mode]["tok_s"] > 0 and r[mode]["speedup"] > 0
