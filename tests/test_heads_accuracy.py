"""Head accuracy, acceptance simulation and tree building against brute force and real generation."""

import itertools
import json

import pytest
import torch

from medusa.eval.heads_accuracy import accuracies, head_hits, main, simulate_accept_lengths
from medusa.model.tree_builder import build_tree, expected_tokens_per_step
from medusa.model import presets, validate_medusa_choices
from tests.fitting import fitted_medusa, greedy_reference
from tests.test_generate import CHAIN, CUSTOM, prompts
from tests.tiny import tiny_model, tiny_tokenizer


@pytest.mark.parametrize("tree", [CHAIN, CUSTOM, presets()["mc_sim_7b_63"]])
def test_simulated_accept_lengths_equal_real_generation(tree):
    base = tiny_model("llama", seed=10)
    model = fitted_medusa(base, prompts(100, 4), 4, steps=200)
    for input_ids in prompts(100, 4)[:2] + prompts(8, 2):
        real = [out["accept_length"] for out in model.medusa_generate(input_ids, max_new_tokens=40, medusa_choices=tree,
                                                                      eos_token_id=[], copy_chains=0)]
        sequence = torch.cat([input_ids[0], torch.tensor(greedy_reference(base, input_ids, 40))])
        simulated = simulate_accept_lengths(head_hits(model, sequence), input_ids.shape[1], tree)
        assert len(simulated) == len(real)
        assert simulated[:-1] == real[:-1]  # the last step may be cut at the token limit
        assert simulated[-1] <= real[-1]


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
    main(command_line(tmp_path) + ["--trees", "mc_sim_7b_63", "[[0], [0, 0]]", "--build-tree", "12",
                                   "--tree-output", str(tmp_path / "tree.json"), "--output", str(tmp_path / "out.json")])
    result = json.loads((tmp_path / "out.json").read_text())
    assert result["questions"] == 3 and len(result["top1"]) == 4 and result["new_tokens"] > 0
    assert set(result["trees"]) == {"default", "mc_sim_7b_63", "[[0], [0, 0]]", "built_12"}
    for figures in result["trees"].values():
        assert 1.0 <= figures["tokens_per_step"] <= 5.0
    tree = json.loads((tmp_path / "tree.json").read_text())
    assert len(tree) == 12 and validate_medusa_choices(tree, 4) == tree
