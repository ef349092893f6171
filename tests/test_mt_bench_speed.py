"""benchmarks/mt_bench_speed.py on CPU: the GPU benchmark's code paths, with the exactness fp32 allows."""

import json

import pytest

from benchmarks.mt_bench_speed import main
from tests.test_heads_accuracy import command_line


def test_mt_bench_benchmark_reports_speeds_and_the_random_weight_overhead(tmp_path, capsys):
    args = command_line(tmp_path)  # tiny 4-head heads + base + 3 questions of category "x"
    heads, questions = args[args.index("--model") + 1], args[args.index("--questions") + 1]
    main(["--model", heads, "--questions", questions, "--device", "cpu", "--dtype", "float32", "--max-new-tokens",
          "16", "--hf-limit", "2", "--trees", "mc_sim_7b_63@2x10", "[[0], [0, 0]]@0x0", "default", "default@2x10", "--overhead-shape", "tiny",
          "--output", str(tmp_path / "out.json")])
    result = json.loads((tmp_path / "out.json").read_text())
    overall = result["overall"]
    assert overall == result["categories"]["x"] and overall["questions"] == 3
    assert overall["hf_identical_to_greedy"] == 1.0  # fp32: HF generate() and the greedy loop agree
    rows = result["rows"]
    assert [r["greedy_tokens"] for r in rows] == [16] * 3 and [("hf_s" in r) for r in rows] == [True, True, False]
    for tree in ("mc_sim_7b_63@2x10", "[[0], [0, 0]]@0x0", "default", "default@2x10"):
        medusa = overall[f"medusa[{tree}]"]
        assert medusa["identical_to_greedy"] == 1.0 and all(r[f"medusa[{tree}]"]["first_difference"] is None for r in rows)
        steps = sum(r[f"medusa[{tree}]"]["steps"] for r in rows)
        assert medusa["tokens_per_step"] == pytest.approx(48 / steps)
        # A fixed tree speculates; the default may verify no tree where drafts do not pay (tiny random heads).
        assert medusa["tokens_per_step"] > 1 if "@" in tree else medusa["tokens_per_step"] >= 1
        seconds = sum(r[f"medusa[{tree}]"]["s"] for r in rows)
        assert medusa["speedup_vs_greedy"] == pytest.approx((48 / seconds) / overall["greedy_tok_s"])
    # "default" is the preset pruned to the heads: with 4 heads, all of mc_sim_7b_63; @ fixes the tree.
    assert [r["medusa[default@2x10]"]["steps"] for r in rows] == [r["medusa[mc_sim_7b_63@2x10]"]["steps"] for r in rows]
    overhead = result["overhead"]
    assert overhead["shape"] == "tiny" and overhead["tree"] == "mc_sim_7b_63"
    assert overhead["identical_first_32_tokens"] == {"none": {"eager_equals_hf": True},
                                                     "mc_sim_7b_63": {"eager_equals_hf": True}}
    assert overhead["overhead_c"] == pytest.approx(overhead["medusa_eager_ms_per_step"] /
                                                   overhead["greedy_eager_ms_per_step"] - 1)
    assert overhead["greedy_eager_tokens_per_step"] == 1.0
    assert f"c = {overhead['overhead_c']:.3f}" in capsys.readouterr().out



def test_repeats_keep_each_loops_fastest_run(tmp_path):
    args = command_line(tmp_path)
    heads, questions = args[args.index("--model") + 1], args[args.index("--questions") + 1]
    main(["--model", heads, "--questions", questions, "--device", "cpu", "--dtype", "float32", "--max-new-tokens",
          "8", "--hf-limit", "0", "--trees", "[[0], [0, 0]]@0x0", "--overhead-shape", "none", "--repeats", "3",
          "--output", str(tmp_path / "out.json")])
    result = json.loads((tmp_path / "out.json").read_text())
    assert result["repeats"] == 3
    for row in result["rows"]:
        medusa = row["medusa[[[0], [0, 0]]@0x0]"]
        assert len(row["greedy_s_runs"]) == len(medusa["s_runs"]) == 3
        assert row["greedy_s"] == min(row["greedy_s_runs"]) and medusa["s"] == min(medusa["s_runs"])
    assert result["overall"]["greedy_tok_s"] == pytest.approx(24 / sum(r["greedy_s"] for r in result["rows"]))
