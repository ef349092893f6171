"""Head accuracy, acceptance simulation and tree building against brute force and real generation."""

import itertools
import json

import pytest
import torch

from medusa.eval.heads_accuracy import (accuracies, dynamic_head_accept_lengths, head_accept_lengths, head_hits, main,
                                        simulate_accept_lengths)
from medusa.model.tree_builder import build_tree, expected_tokens_per_step
from medusa.model import presets, validate_medusa_choices
from medusa.model.candidates import COPY_CHAINS, COPY_DEPTH
from tests.fitting import fitted_medusa, greedy_reference
from tests.test_copy_branches import repetitive_prompt
from tests.test_generate import CHAIN, CUSTOM, fitted, prompts
from tests.tiny import tiny_model, tiny_tokenizer


def simulated_and_real(model, input_ids, tree, chains: int, depth: int) -> tuple[list[int], list[int]]:
    """Accept lengths of greedy generation (40 tokens) simulated from the heads' hits, and measured."""
    real = [out["accept_length"] for out in model.medusa_generate(input_ids, max_new_tokens=40, medusa_choices=tree,
                                                                  eos_token_id=[], copy_chains=chains, copy_depth=depth,
                                                                  adaptive=False)]
    sequence = torch.cat([input_ids[0], torch.tensor(greedy_reference(model.base_model, input_ids, 40))])
    paths = [] if tree == "none" else tree
    hits, _ = head_hits(model, sequence)
    simulated = simulate_accept_lengths(sequence, head_accept_lengths(hits, paths), input_ids.shape[1], chains, depth)
    assert len(simulated) == len(real)
    assert simulated[:-1] == real[:-1]  # the last step may be cut at the token limit
    assert simulated[-1] <= real[-1]
    return simulated, real


@pytest.mark.parametrize("tree", [CHAIN, CUSTOM, presets()["mc_sim_7b_63"]])
def test_simulated_accept_lengths_equal_real_generation(tree):
    model = fitted("llama", 4)
    for input_ids in prompts(100, 4)[:2] + prompts(8, 2):
        simulated_and_real(model, input_ids, tree, 0, 0)


@pytest.mark.parametrize("tree, chains, depth", [(CHAIN, 2, 10), (CUSTOM, 1, 4), ("none", 2, 6), ("none", 1, 1)])
def test_simulated_accept_lengths_with_copy_branches_equal_real_generation(tree, chains, depth):
    model = fitted("llama", 4)
    longest = 0
    for input_ids in [repetitive_prompt(1), repetitive_prompt(2)] + prompts(8, 1):
        _, real = simulated_and_real(model, input_ids, tree, chains, depth)
        longest = max(longest, *real)
    assert longest > (0 if tree == "none" else 3)  # longer than any head path: a copy chain was accepted


def test_dynamic_trees_accept_the_longest_hit_among_the_likeliest_paths_by_brute_force():
    gen = torch.Generator().manual_seed(4)
    length, heads, top_k = 30, 3, 4
    paths = [p for d in range(1, heads + 1) for p in itertools.product(range(top_k), repeat=d)]
    for _ in range(5):
        log_probs = torch.rand(length, heads, top_k, generator=gen).log()  # distinct: no ties between paths
        hits = torch.rand(length, heads, top_k, generator=gen) < 0.4
        for nodes in (1, 3, 10, 40, len(paths)):
            lengths = dynamic_head_accept_lengths(hits, log_probs, nodes)
            for t in range(length):
                joint = lambda p: sum(log_probs[t, d, r].item() for d, r in enumerate(p))  # noqa: E731
                chosen = sorted(paths, key=joint, reverse=True)[:nodes]
                assert all(p[:-1] in chosen for p in chosen if len(p) > 1)  # a tree: every parent is in it
                accepted = [len(p) for p in chosen if all(hits[t, d, r] for d, r in enumerate(p))]
                assert lengths[t] == max(accepted, default=0)
        every = head_accept_lengths(hits, [list(p) for p in paths])
        assert torch.equal(dynamic_head_accept_lengths(hits, log_probs, len(paths)), every)


def test_accuracies_count_only_continuation_positions():
    hits = torch.zeros(8, 2, 3, dtype=torch.bool)  # S = 8, prompt_len = 3: head 0 scored at t = 2..5, head 1 at 2..4
    hits[2, 0, 0] = hits[3, 0, 1] = hits[4, 0, 0] = True
    hits[1, 0, 0] = True  # inside the prompt: not counted
    hits[2, 1, 2] = True
    acc = accuracies([hits], [3])
    torch.testing.assert_close(acc, torch.tensor([[2 / 4, 1 / 4, 0.0], [0.0, 0.0, 1 / 3]], dtype=torch.float64))


def test_built_tree_is_the_most_likely_node_set():
    gen = torch.Generator().manual_seed(0)
    for _ in range(20):
        acc = torch.rand(3, 4, generator=gen).sort(descending=True).values * torch.rand(3, 1, generator=gen)
        all_nodes = [list(p) for d in (1, 2, 3) for p in itertools.product(range(4), repeat=d)]
        value = lambda p: torch.prod(acc[torch.arange(len(p)), torch.tensor(p)]).item()  # noqa: E731
        for size in (1, 5, 17, 40):
            tree = build_tree(acc, size)
            validate_medusa_choices(tree, 3, top_k=4)
            best = sorted(all_nodes, key=value, reverse=True)[:size]
            assert sorted(map(tuple, tree)) == sorted(map(tuple, best))
            assert expected_tokens_per_step(acc, tree) == pytest.approx(1 + sum(map(value, best)))


def test_build_tree_refuses_impossible_sizes():
    with pytest.raises(ValueError, match=r"num_nodes must be in \[1, 6\]"):
        build_tree([[0.5, 0.2], [0.3, 0.1]], 7)


def command_line(tmp_path) -> list[str]:
    """Arguments that run the command line on tiny 4-head heads (saved under ``tmp_path``) and 3 questions."""
    base = tiny_model("qwen2", seed=10)
    base.generation_config.eos_token_id = 2
    tokenizer = tiny_tokenizer()
    base.save_pretrained(tmp_path / "base")
    tokenizer.save_pretrained(tmp_path / "base")
    model = fitted_medusa(base, prompts(100, 2), 4, steps=50)
    model.config.base_model_name_or_path = str(tmp_path / "base")
    model.save_pretrained(tmp_path / "heads")
    questions = tmp_path / "q.jsonl"
    questions.write_text("".join(json.dumps({"question_id": i, "category": "x", "turns": [t]}) + "\n"
                                 for i, t in enumerate(["Hello! How are you?", "The quick brown fox", "def add(a, b):"])))
    return ["--model", str(tmp_path / "heads"), "--questions", str(questions), "--max-new-tokens", "24", "--device", "cpu"]


def test_command_line_writes_figures_and_a_loadable_tree(tmp_path):
    main(command_line(tmp_path) + ["--trees", "mc_sim_7b_63", "[[0], [0, 0]]", "none", "--build-tree", "12",
                                   "--dynamic", "5", "--tree-output", str(tmp_path / "tree.json"),
                                   "--output", str(tmp_path / "out.json")])
    result = json.loads((tmp_path / "out.json").read_text())
    assert result["questions"] == 3 and len(result["top1"]) == 4 and result["new_tokens"] > 0
    assert (result["copy_chains"], result["copy_depth"]) == (COPY_CHAINS, COPY_DEPTH)
    assert set(result["trees"]) == {"default", "mc_sim_7b_63", "[[0], [0, 0]]", "none", "built_12", "built_5", "dynamic_5"}
    assert result["trees"]["dynamic_5"]["nodes"] == result["trees"]["built_5"]["nodes"] == 5
    for figures in result["trees"].values():
        assert 1.0 <= figures["heads_tokens_per_step"] <= figures["tokens_per_step"] <= 1.0 + COPY_DEPTH
    assert result["trees"]["none"]["nodes"] == 0 and result["trees"]["none"]["heads_tokens_per_step"] == 1.0
    tree = json.loads((tmp_path / "tree.json").read_text())
    assert len(tree) == 12 and validate_medusa_choices(tree, 4) == tree


def test_command_line_without_copy_branches_reports_the_heads_alone(tmp_path, capsys):
    main(command_line(tmp_path) + ["--copy-chains", "0", "--output", str(tmp_path / "out.json")])
    figures = json.loads((tmp_path / "out.json").read_text())["trees"]["default"]
    assert figures["tokens_per_step"] == figures["heads_tokens_per_step"]
    assert "copy chains" not in capsys.readouterr().out


def test_command_line_refuses_copy_branches_without_tokens(capsys):
    with pytest.raises(SystemExit):
        main(["--model", "unused", "--copy-chains", "2", "--copy-depth", "0"])
    assert "--copy-chains/--copy-depth: copy_depth must be at least 1" in capsys.readouterr().err
