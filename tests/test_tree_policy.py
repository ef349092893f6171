"""CostCurve interpolation and files, TreePolicy choices against brute force, and the policy in use."""

import json

import pytest
import torch

from medusa.eval.verify_cost import main as verify_cost_main
from medusa.eval.heads_accuracy import main as heads_accuracy_main
from medusa.model.tree_builder import build_tree, expected_tokens_per_step
from medusa.model import CheckpointError, CostCurve, MedusaModel, TreePolicy
from tests.fitting import greedy_reference
from tests.test_generate import batch_prompts, fitted, prompts, run
from tests.test_heads_accuracy import command_line

BATCHES = [1, 4, 16, 64]
TREES = [1, 2, 4, 8, 16, 32, 64]
ACC = [[0.6 ** (d + 1) * 0.5**r for r in range(10)] for d in range(4)]  # [4 heads, top-10], decreasing


def curve(ms, batch_sizes=BATCHES, tree_sizes=TREES):
    """A curve from ``ms(b, t)``."""
    return CostCurve(batch_sizes, tree_sizes, [[float(ms(b, t)) for t in tree_sizes] for b in batch_sizes])


def tree_size(choice):
    return 1 if choice == "none" else len(choice) + 1


# ----------------------------------------------------------------------------- CostCurve
def test_interpolation_matches_hand_computed_values():
    c = CostCurve([1, 4], [1, 4, 8], [[10, 13, 21], [20, 32, 40]])
    assert c.time(1, 1) == 10 and c.time(4, 8) == 40  # measured points
    assert c.time(1, 2) == pytest.approx(11)  # 10 + 1/3 * (13 - 10)
    assert c.time(1, 6) == pytest.approx(17)  # 13 + 1/2 * (21 - 13)
    assert c.time(2, 4) == pytest.approx(13 + 19 / 3)  # between batches: 1/3 of the way from 13 to 32
    assert c.time(2, 6) == pytest.approx(17 + 19 / 3)  # both: 17 at b=1, 36 at b=4
    assert c.time(8, 4) == pytest.approx(64)  # beyond the largest batch: proportional (32 * 8 / 4)
    assert c.time(6, 8) == pytest.approx(60)
    below = CostCurve([2, 4], [1, 4], [[10, 13], [20, 32]])
    assert below.time(1, 4) == 13  # below the smallest batch: its time
    with pytest.raises(ValueError, match="outside the measured 1..8"):
        c.time(1, 9)


def test_save_load_round_trip(tmp_path):
    c = CostCurve([1, 4], [1, 4], [[1.5, 2.0], [3.0, 5.0]], device="H200", model="random-7b", dtype="bfloat16")
    c.save(tmp_path / "c.json")
    d = CostCurve.load(tmp_path / "c.json")
    assert (d.batch_sizes, d.tree_sizes, d.ms, d.device, d.model, d.dtype) == ([1, 4], [1, 4], [[1.5, 2.0], [3.0, 5.0]],
                                                                                "H200", "random-7b", "bfloat16")


GOOD = {"device": "x", "model": "y", "dtype": "z", "batch_sizes": [1, 4], "tree_sizes": [1, 8], "ms": [[1, 2], [3, 4]]}


@pytest.mark.parametrize("change, message", [
    ({"ms": [[1, 2], [3]]}, "ms must be 2 rows"),
    ({"ms": [[1, 2]]}, "ms must be 2 rows"),
    ({"tree_sizes": [8, 1]}, "tree_sizes must be strictly increasing"),
    ({"batch_sizes": [4, 4]}, "batch_sizes must be strictly increasing"),
    ({"tree_sizes": [2, 8]}, "tree_sizes must start at 1"),
    ({"batch_sizes": [0, 4]}, "batch_sizes must be a non-empty list of positive integers"),
    ({"ms": [[1, 0], [3, 4]]}, "ms at batch size 1, tree size 8 must be a positive number"),
    ({"ms": [[1, 2], [-3, 4]]}, "ms at batch size 4, tree size 1"),
    ({"ms": [[1, "2"], [3, 4]]}, "must be a positive number"),
    ({"ms": None}, "a JSON object with batch_sizes, tree_sizes and ms"),
])
def test_malformed_curves_are_refused(tmp_path, change, message):
    data = {k: v for k, v in (GOOD | change).items() if v is not None}
    (tmp_path / "c.json").write_text(json.dumps(data))
    with pytest.raises(ValueError, match=message) as error:
        CostCurve.load(tmp_path / "c.json")
    assert str(tmp_path / "c.json") in str(error.value)


def test_a_file_that_is_not_json_is_refused(tmp_path):
    (tmp_path / "c.json").write_text("batch_sizes: [1]")
    with pytest.raises(ValueError, match="not JSON"):
        CostCurve.load(tmp_path / "c.json")


# ----------------------------------------------------------------------------- TreePolicy
def test_flat_cost_picks_the_largest_tree():
    policy = TreePolicy(ACC, curve(lambda b, t: 7.0))
    for b in BATCHES + [3, 200]:
        assert policy.choices(b) == build_tree(ACC, 63)
        tree, speedup = policy.expected_speedup(b)
        assert speedup == pytest.approx(expected_tokens_per_step(ACC, tree))


def test_steep_cost_shrinks_the_tree_as_the_batch_grows_then_gives_up():
    policy = TreePolicy(ACC, curve(lambda b, t: 10 * (1 + 0.01 * b * (t - 1))))
    sizes = [tree_size(policy.choices(b)) for b in BATCHES]
    assert sizes == sorted(sizes, reverse=True) and sizes[0] > sizes[1] > sizes[2] > 1
    # At 64 rows even the 2-token tree (1.6 tokens per step) costs 1.64x: every tree is slower.
    assert all(policy.speedup(64, t) < 1 for t in policy.candidate_sizes)
    assert policy.choices(64) == "none" and policy.expected_speedup(64) == ("none", 1.0)


def brute_force(acc, cost, b):
    """(size, speedup) of the best candidate, from build_tree and the curve alone (size 1, speedup 1: none)."""
    best = (1, 1.0)
    for t in cost.tree_sizes[1:]:
        if t - 1 <= sum(len(acc[0]) ** d for d in range(1, len(acc) + 1)):
            speedup = expected_tokens_per_step(acc, build_tree(acc, t - 1)) * cost.time(b, 1) / cost.time(b, t)
            best = max(best, (t, speedup), key=lambda x: x[1])  # first (smaller) wins a tie
    return best


def test_choice_maximises_speedup_over_all_candidates():
    gen = torch.Generator().manual_seed(0)
    for _ in range(30):
        heads, top_k = (int(x) for x in torch.randint(1, 5, (2,), generator=gen))
        acc = (torch.rand(heads, top_k, generator=gen).sort(descending=True).values
               * torch.rand(heads, 1, generator=gen)).tolist()
        steps = torch.rand(len(BATCHES), len(TREES), generator=gen).cumsum(1) * torch.rand(len(BATCHES), 1, generator=gen)
        cost = CostCurve(BATCHES, TREES, (1 + steps).tolist())
        policy = TreePolicy(acc, cost)
        for b in BATCHES + [2, 10, 100]:
            size, speedup = brute_force(acc, cost, b)
            tree, policy_speedup = policy.expected_speedup(b)
            assert tree_size(tree) == size and policy_speedup == pytest.approx(speedup)
            assert tree == "none" or tree == build_tree(acc, size - 1)


def test_candidates_stop_at_what_the_heads_can_hold():
    policy = TreePolicy([[0.9, 0.8, 0.7]], curve(lambda b, t: 1.0))  # one head, top-3: 3 nodes at most
    assert policy.candidate_sizes == [2, 4]
    assert policy.choices(1) == [[0], [1], [2]]


def test_choices_are_memoised_per_batch_size(monkeypatch):
    policy = TreePolicy(ACC, curve(lambda b, t: 1 + b * t / 100))
    calls = []
    time = policy.cost.time
    monkeypatch.setattr(policy.cost, "time", lambda b, t: calls.append(b) or time(b, t))
    first = policy.choices(4)
    assert calls and set(calls) == {4}
    calls.clear()
    assert policy.choices(4) is first and not calls


def test_load_reads_heads_accuracy_output(tmp_path):
    (tmp_path / "acc.json").write_text(json.dumps({"top1": [0.6], "accuracy": ACC}))
    curve(lambda b, t: 5.0).save(tmp_path / "cost.json")
    assert TreePolicy.load(tmp_path / "acc.json", tmp_path / "cost.json").choices(1) == build_tree(ACC, 63)
    (tmp_path / "acc.json").write_text(json.dumps({"top1": [0.6]}))
    with pytest.raises(ValueError, match="'accuracy' field"):
        TreePolicy.load(tmp_path / "acc.json", tmp_path / "cost.json")


# ----------------------------------------------------------------------------- in use
def test_heads_accuracy_cost_curve_grows_reports_and_writes_the_policy_tree(tmp_path):
    # Flat at 1 row: the largest tree (15 nodes); at 64 rows any tree costs 100x: none.
    CostCurve([1, 64], [1, 2, 4, 8, 16], [[1, 1, 1, 1, 1], [1, 100, 100, 100, 100]]).save(tmp_path / "cost.json")
    heads_accuracy_main(command_line(tmp_path) + ["--cost-curve", str(tmp_path / "cost.json"), "--tree-output",
                                                  str(tmp_path / "tree.json"), "--output", str(tmp_path / "out.json")])
    result = json.loads((tmp_path / "out.json").read_text())
    tree = json.loads((tmp_path / "tree.json").read_text())
    assert tree == build_tree(result["accuracy"], 15)
    assert set(result["trees"]) == {"default", "policy_15"} and result["trees"]["policy_15"]["nodes"] == 15
    assert set(result["policy"]) == {"1", "4", "16", "64"}
    assert result["policy"]["1"]["nodes"] == 15 and result["policy"]["1"]["expected_speedup"] > 1
    assert result["policy"]["64"] == {"nodes": 0, "expected_speedup": 1.0}
    assert TreePolicy.load(tmp_path / "out.json", tmp_path / "cost.json").choices(1) == tree


def test_heads_accuracy_save_policy_makes_the_heads_load_with_it(tmp_path, capsys):
    CostCurve([1, 64], [1, 2, 4, 8, 16], [[1, 1, 1, 1, 1], [1, 100, 100, 100, 100]]).save(tmp_path / "cost.json")
    args = command_line(tmp_path)
    with pytest.raises(SystemExit):
        heads_accuracy_main(args + ["--save-policy"])
    assert "--save-policy needs --cost-curve" in capsys.readouterr().err
    heads_accuracy_main(args + ["--cost-curve", str(tmp_path / "cost.json"), "--save-policy",
                                "--output", str(tmp_path / "out.json")])
    result = json.loads((tmp_path / "out.json").read_text())
    model = MedusaModel.from_pretrained(str(tmp_path / "heads"))
    assert model.tree_policy.choices(1) == build_tree(result["accuracy"], 15)
    assert model.tree_policy.choices(64) == "none"


def test_heads_accuracy_refuses_a_malformed_curve_before_loading_the_model(tmp_path):
    (tmp_path / "cost.json").write_text(json.dumps(GOOD | {"ms": [[1, 2]]}))
    with pytest.raises(ValueError, match="ms must be 2 rows"):
        heads_accuracy_main(["--model", str(tmp_path / "missing"), "--cost-curve", str(tmp_path / "cost.json")])


class Recording(TreePolicy):
    """A policy that records the batch sizes it is asked about."""

    def __init__(self, *args):
        super().__init__(*args)
        self.asked = []

    def choices(self, batch_size):
        self.asked.append(batch_size)
        return super().choices(batch_size)


def test_generate_uses_the_policy_tree():
    model = fitted("llama", 4)
    policy = Recording(ACC, curve(lambda b, t: 3.0, tree_sizes=[1, 2, 4, 8, 16]))
    model.tree_policy = policy
    try:
        for input_ids in prompts(100, 4)[:2] + prompts(7, 1):
            tokens, accepted = run(model, input_ids, max_new_tokens=40, eos_token_id=[])
            assert tokens == greedy_reference(model.base_model, input_ids, 40)
            assert set(policy.asked) == {1}
            assert (tokens, accepted) == run(model, input_ids, max_new_tokens=40, eos_token_id=[],
                                             medusa_choices=build_tree(ACC, 15))
            assert max(accepted) >= 2
        policy.asked.clear()
        run(model, input_ids, max_new_tokens=8, eos_token_id=[], medusa_choices=[[0]])
        assert not policy.asked  # an explicit tree wins over the policy
    finally:
        model.tree_policy = None


def test_generate_with_a_policy_of_none_decodes_plainly():
    model = fitted("llama", 4)
    policy = TreePolicy(ACC, curve(lambda b, t: 1.0 if t == 1 else 50.0))
    assert policy.choices(1) == "none"
    input_ids = prompts(100, 4)[0]
    tokens, accepted = run(model, input_ids, max_new_tokens=30, eos_token_id=[], tree_policy=policy)
    assert tokens == greedy_reference(model.base_model, input_ids, 30)
    assert accepted == [0] * 30


def test_batched_generate_asks_the_policy_at_each_batch_size():
    model = fitted("llama", 4)
    # 5 to 8 rows: no tree pays off; 4 rows: a small one; 1 or 2 rows: larger ones.
    cost = CostCurve([1, 2, 4, 8], [1, 2, 4, 8, 16], [[10, 10, 10, 10, 10], [10, 11, 12, 14, 30],
                                                      [10, 12, 15, 25, 60], [10, 100, 100, 100, 100]])
    policy = Recording(ACC, cost)
    batch = batch_prompts(12, 7)
    references = [greedy_reference(model.base_model, p[None], 40) for p in batch]
    # "EOS" tokens that rows 0-4 emit early and rows 5 and 6 never, so that the batch shrinks to 2 rows.
    eos = sorted({ref[2] for ref in references[:5]} - set(references[5]) - set(references[6]))
    expected = [ref[: next((i + 1 for i, t in enumerate(ref) if t in eos), len(ref))] for ref in references]
    outputs, steps = [[] for _ in batch], []
    # Heads only, so that a step's accept length is bounded by the chosen tree's depth.
    for rows in model.medusa_generate(batch, max_new_tokens=40, eos_token_id=eos, tree_policy=policy, copy_chains=0,
                                      adaptive=False):
        steps.append([row["accept_length"] for row in rows if row is not None])
        for output, row in zip(outputs, rows):
            output += row["new_token_ids"] if row else []
    assert outputs == expected
    # Asked up front for every batch size the rows can shrink to, then at the start and at each shrink.
    assert sorted(policy.asked[:7]) == list(range(1, 8))
    sizes = policy.asked[7:]
    assert sizes[0] == 7 and sizes[-1] <= 2 and sizes == sorted(sizes, reverse=True)
    assert policy.choices(7) == "none" and steps[0] == [0] * 7  # 7 rows: no tree pays, plain steps
    depth = max(max(map(len, c)) for c in map(policy.choices, sizes) if c != "none")
    assert max(a for accepted in steps for a in accepted) <= depth
    assert {policy.choices(s) == "none" for s in sizes} == {True, False}
    assert max(a for accepted in steps for a in accepted) >= 1


def test_a_checkpoint_with_policy_files_loads_with_its_policy(tmp_path):
    model = fitted("llama", 4)
    model.save_pretrained(tmp_path)
    assert MedusaModel.from_pretrained(str(tmp_path), base_model=model.base_model).tree_policy is None
    # A large tree at 1 row, a small one at 16, none at 64.
    cost = curve(lambda b, t: {1: 10.0, 4: 10.0, 16: 10.0 + t, 64: 10.0 + 100 * (t > 1)}[b])
    (tmp_path / "heads_accuracy.json").write_text(json.dumps({"accuracy": ACC}))
    cost.save(tmp_path / "verify_cost.json")
    loaded = MedusaModel.from_pretrained(str(tmp_path), base_model=model.base_model)
    expected = TreePolicy(ACC, cost)
    assert [loaded.tree_policy.choices(b) for b in BATCHES] == [expected.choices(b) for b in BATCHES]
    assert len(expected.choices(1)) > len(expected.choices(16)) > 0 and expected.choices(64) == "none"
    input_ids = prompts(100, 4)[1]
    tokens, accepted = run(loaded, input_ids, max_new_tokens=30, eos_token_id=[])
    assert tokens == greedy_reference(model.base_model, input_ids, 30) and max(accepted) >= 2
    assert (tokens, accepted) == run(loaded, input_ids, max_new_tokens=30, eos_token_id=[],
                                     medusa_choices=expected.choices(1))
    loaded.save_pretrained(tmp_path / "again")  # the policy travels with the heads
    again = MedusaModel.from_pretrained(str(tmp_path / "again"), base_model=model.base_model)
    assert [again.tree_policy.choices(b) for b in BATCHES] == [expected.choices(b) for b in BATCHES]


@pytest.mark.parametrize("accuracy, message", [(ACC[:3], "measures 3 heads; the checkpoint has 4"),
                                               ("{", "heads_accuracy.json: not JSON"),
                                               ([[0.5, 2.0]] * 4, "heads_accuracy.json: .*accurac")])
def test_bad_policy_files_are_a_checkpoint_error_naming_the_file(tmp_path, accuracy, message):
    model = fitted("llama", 4)
    model.save_pretrained(tmp_path)
    text = accuracy if isinstance(accuracy, str) else json.dumps({"accuracy": accuracy})
    (tmp_path / "heads_accuracy.json").write_text(text)
    curve(lambda b, t: 5.0).save(tmp_path / "verify_cost.json")
    with pytest.raises(CheckpointError, match=message):
        MedusaModel.from_pretrained(str(tmp_path), base_model=model.base_model)


def test_verify_cost_measures_a_loadable_curve_on_cpu(tmp_path, capsys):
    verify_cost_main(["--shape", "tiny", "--heads", "2", "--device", "cpu", "--batch-sizes", "2,1", "--tree-sizes",
                      "4,2,200", "--prompt-len", "8", "--new-tokens", "8", "--warmup", "1", "--iters", "2",
                      "--output", str(tmp_path / "cost.json")])
    cost = CostCurve.load(tmp_path / "cost.json")
    # Sorted, tree size 1 added (the baseline), 200 dropped: 2 heads of top-10 hold 111 tokens at most.
    assert (cost.batch_sizes, cost.tree_sizes) == ([1, 2], [1, 2, 4])
    assert (cost.device, cost.model, cost.dtype) == ("cpu", "random-tiny", "float32")
    assert "skipping tree sizes [200]" in capsys.readouterr().err
    assert TreePolicy(ACC[:2], cost).choices(1) in ("none", build_tree(ACC[:2], 1), build_tree(ACC[:2], 3))
