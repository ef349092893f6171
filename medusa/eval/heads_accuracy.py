"""Head accuracy against the base model's own greedy continuation, and the tokens per step a tree would get.

For each prompt the base model's greedy continuation is computed once; one teacher-forced forward
over prompt + continuation gives every position's hidden state, hence every head's top-k. At
temperature 0 a Medusa step starting after position t accepts tree node ``path`` exactly when head
d's rank-``path[d]`` token is the continuation's token at ``t + d + 2`` for every d, so the accept
lengths of a whole generation follow from these hits alone: trees can be compared without running
them. The copy branches (prompt lookup) are simulated too: their tokens depend only on the text so far,
so a step accepts the longest of the head paths and the copy chains that agree with the continuation,
as greedy verification does.

    python -m medusa.eval.heads_accuracy --model HEADS_DIR --max-new-tokens 256 --output acc.json
    python -m medusa.eval.heads_accuracy --model HEADS_DIR --cost-curve cost.json --tree-output tree.json
"""

import argparse
import json
import os

import torch
from tqdm import tqdm

from medusa.model import CostCurve, MedusaModel, TreePolicy, resolve_medusa_choices
from medusa.model.candidates import COPY_CHAINS, COPY_DEPTH, copy_agreement
from medusa.model.eos import eos_token_ids
from medusa.model.generate import check_copy_shape
from medusa.model.tree_policy import POLICY_FILES

from .answer_cli import main_guard, model_dtype
from .questions import DEFAULT_QUESTIONS, load_questions, render_chat
from ..model.tree_builder import build_tree, expected_tokens_per_step

POLICY_BATCH_SIZES = (1, 4, 16, 64)  # reported with --cost-curve


@torch.inference_mode()
def greedy_continuations(base, prompts: list[torch.Tensor], max_new_tokens: int, batch_size: int = 16,
                         tokenizer=None) -> list[torch.Tensor]:
    """Prompt + greedy continuation ``[S]`` per ``[1, P]`` prompt by the causal LM ``base`` (left-padded batches,
    cut after EOS: the generation config's, else ``tokenizer``'s)."""
    eos = eos_token_ids(base, tokenizer=tokenizer)
    pad = base.generation_config.pad_token_id
    pad = pad if pad is not None else next(iter(eos), 0)
    device = base.get_output_embeddings().weight.device
    sequences = []
    for start in tqdm(range(0, len(prompts), batch_size), desc="greedy continuations", unit="batch"):
        batch = [p[0] for p in prompts[start : start + batch_size]]
        width = max(len(p) for p in batch)
        ids = torch.full((len(batch), width), pad, dtype=torch.long)
        mask = torch.zeros(len(batch), width, dtype=torch.long)
        for row, p in enumerate(batch):
            ids[row, width - len(p) :], mask[row, width - len(p) :] = p, 1
        out = base.generate(ids.to(device), attention_mask=mask.to(device), max_new_tokens=max_new_tokens,
                            do_sample=False, pad_token_id=pad, eos_token_id=eos or None)
        for row, p in enumerate(batch):
            new = out[row, width:].tolist()
            cut = next((i + 1 for i, t in enumerate(new) if t in eos), len(new))
            sequences.append(torch.cat([p, torch.tensor(new[:cut], dtype=torch.long)]))
    return sequences


@torch.inference_mode()
def head_hits(model: MedusaModel, sequence: torch.Tensor, top_k: int = 10) -> tuple[torch.Tensor, torch.Tensor]:
    """Each head's top-k along ``sequence`` ``[S]``: (hits, log_probs), both ``[S, heads, top_k]``.

    ``hits[t, d, r]``: head d's rank-r token at t is ``sequence[t + d + 2]``; ``log_probs[t, d, r]``: its log
    probability under the head (what a tree rebuilt every step would rank paths by).
    """
    device = model.lm_head.weight.device
    hidden = model.hidden_states(sequence[None].to(device))[0]  # [S, d]
    log_probs, top = model.head_logits(hidden).float().log_softmax(-1).topk(top_k, dim=-1)  # [heads, S, top_k]
    top, log_probs = top.cpu(), log_probs.cpu().transpose(0, 1)
    heads, length = top.shape[0], sequence.shape[0]
    hits = torch.zeros(length, heads, top_k, dtype=torch.bool)
    for d in range(heads):
        valid = length - d - 2
        if valid > 0:
            hits[:valid, d] = top[d, :valid] == sequence[d + 2 :, None]
    return hits, log_probs


def accuracies(all_hits: list[torch.Tensor], prompt_lens: list[int]) -> torch.Tensor:
    """``[heads, top_k]``: P(head d's rank-r token is right), over the continuation positions."""
    heads, top_k = all_hits[0].shape[1:]
    correct = torch.zeros(heads, top_k, dtype=torch.float64)
    counted = torch.zeros(heads, dtype=torch.float64)
    for hits, prompt_len in zip(all_hits, prompt_lens):
        for d in range(heads):
            rows = hits[prompt_len - 1 : hits.shape[0] - d - 2, d]
            correct[d] += rows.sum(0)
            counted[d] += rows.shape[0]
    return correct / counted.clamp_min(1)[:, None]


def head_accept_lengths(hits: torch.Tensor, tree: list[list[int]]) -> torch.Tensor:
    """``[S]`` long: entry t is the longest head path of ``tree`` (may be empty) accepted by a step after position t."""
    best = torch.zeros(hits.shape[0], dtype=torch.long)
    for path in tree:
        ok = hits[:, torch.arange(len(path)), torch.tensor(path)].all(1)  # [S]
        best = torch.maximum(best, ok * len(path))
    return best


def copy_accept_lengths(sequence: torch.Tensor, start: int, chains: int, depth: int) -> torch.Tensor:
    """``[S]`` long: entry t (``t >= start``; 0 before) is the longest copy chain accepted by a step after position t
    (:func:`~medusa.model.candidates.copy_agreement`)."""
    size = sequence.shape[0]
    best = torch.zeros(size, dtype=torch.long)
    steps = torch.arange(start, size - 1)  # every position a step can start after (its root exists)
    if chains and len(steps):
        best[start : size - 1] = copy_agreement(sequence.expand(len(steps), size), steps, chains, depth)
    return best


def dynamic_head_accept_lengths(hits: torch.Tensor, log_probs: torch.Tensor, nodes: int) -> torch.Tensor:
    """``[S]`` long: the longest accepted head path of a tree rebuilt at every step from the ``nodes`` likeliest
    paths (joint probability: the product of the heads' probabilities along the path, as EAGLE-2 ranks its
    dynamic tree).

    A path's parent is at least as likely, so the likeliest ``nodes`` paths of each depth extend only the
    likeliest ``nodes`` of the depth above: expanding those alone is exact (up to ties).

    Args:
        hits, log_probs: ``[S, heads, top_k]`` from :func:`head_hits`.
    """
    level_lp, level_ok = log_probs[:, 0], hits[:, 0]  # [S, paths of this depth]
    all_lp, all_ok, all_depth = [level_lp], [level_ok], [torch.ones_like(level_lp, dtype=torch.long)]
    for d in range(1, hits.shape[1]):
        parents = level_lp.topk(min(nodes, level_lp.shape[1]), dim=1).indices  # [S, P]
        level_lp = (level_lp.gather(1, parents)[:, :, None] + log_probs[:, d, None, :]).flatten(1)  # [S, P * top_k]
        level_ok = (level_ok.gather(1, parents)[:, :, None] & hits[:, d, None, :]).flatten(1)
        all_lp, all_ok = all_lp + [level_lp], all_ok + [level_ok]
        all_depth.append(torch.full_like(level_lp, d + 1, dtype=torch.long))
    lp, ok, depth = torch.cat(all_lp, 1), torch.cat(all_ok, 1), torch.cat(all_depth, 1)
    chosen = lp.topk(min(nodes, lp.shape[1]), dim=1).indices  # [S, nodes]
    return (ok.gather(1, chosen) * depth.gather(1, chosen)).amax(1)


def simulate_accept_lengths(sequence: torch.Tensor, head_lengths: torch.Tensor, prompt_len: int,
                            copy_chains: int = COPY_CHAINS, copy_depth: int = COPY_DEPTH) -> list[int]:
    """Accept length of every greedy Medusa step generating ``sequence[prompt_len:]`` (exactly generation's).

    Args:
        sequence: ``[S]`` prompt + greedy continuation.
        head_lengths: ``[S]`` the longest head path a step after each position accepts
            (:func:`head_accept_lengths` of a tree, or :func:`dynamic_head_accept_lengths`).
        copy_chains, copy_depth: the copy branches, as ``medusa_generate`` takes them.
    """
    start = prompt_len - 1
    best = torch.maximum(head_lengths, copy_accept_lengths(sequence, start, copy_chains, copy_depth)).tolist()
    lengths, t, last = [], start, sequence.shape[0] - 1
    while t < last:
        accept = min(best[t], last - t - 1)
        lengths.append(accept)
        t += accept + 1
    return lengths


def tokens_per_step(sequences: list[torch.Tensor], head_lengths: list[torch.Tensor], prompt_lens: list[int],
                    copy_chains: int, copy_depth: int) -> float:
    """Simulated tokens per step over all sequences (accepted tokens + the root); ``head_lengths`` as
    :func:`simulate_accept_lengths` takes them, one per sequence."""
    lengths = [a for sequence, heads, n in zip(sequences, head_lengths, prompt_lens)
               for a in simulate_accept_lengths(sequence, heads, n, copy_chains, copy_depth)]
    return sum(a + 1 for a in lengths) / len(lengths)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="Medusa heads directory (any layout MedusaModel reads).")
    parser.add_argument("--base-model", help="Base model directory (default: the one the heads' config names).")
    parser.add_argument("--questions", default=DEFAULT_QUESTIONS, help="FastChat question.jsonl (first turns are used).")
    parser.add_argument("--limit", type=int, help="Use only the first N questions.")
    parser.add_argument("--max-new-tokens", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--top-k", type=int, default=10)
    parser.add_argument("--trees", nargs="*", default=[],
                        help="Trees to simulate besides the default one (preset names, JSON, files; none: copy branches "
                             "only).")
    parser.add_argument("--copy-chains", type=int, default=COPY_CHAINS,
                        help="Copy branches (prompt lookup) added to every tree, as medusa_generate's copy_chains "
                             "(0: heads only).")
    parser.add_argument("--copy-depth", type=int, default=COPY_DEPTH, help="Tokens per copy branch.")
    parser.add_argument("--build-tree", type=int, metavar="NODES", help="Also grow a tree of NODES nodes from the accuracies.")
    parser.add_argument("--dynamic", type=int, nargs="*", default=[], metavar="NODES",
                        help="Also simulate trees rebuilt at every step from the NODES likeliest head paths (dynamic "
                             "trees), each beside the fixed tree of NODES nodes grown from the accuracies.")
    parser.add_argument("--cost-curve", metavar="FILE",
                        help="A measured verify-cost curve (python -m medusa.eval.verify_cost --output): also grow the tree with the "
                             "best expected speedup at batch size 1 and report the choice at batch sizes "
                             f"{', '.join(map(str, POLICY_BATCH_SIZES))}.")
    parser.add_argument("--tree-output", help="Where to write the grown tree (JSON list of paths; with --cost-curve, "
                                              "the policy's tree for batch size 1 unless it is none).")
    parser.add_argument("--save-policy", action="store_true",
                        help="With --cost-curve: write the accuracies and the curve beside the heads (heads_accuracy.json, "
                             "verify_cost.json), so that MedusaModel.from_pretrained gives the model this tree policy.")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default="auto", choices=["auto", "float32", "float16", "bfloat16"])
    parser.add_argument("--output", help="Write all figures as JSON here.")
    args = parser.parse_args(argv)
    if args.save_policy and not args.cost_curve:
        parser.error("--save-policy needs --cost-curve.")
    try:
        check_copy_shape(args.copy_chains, args.copy_depth)
    except ValueError as e:
        parser.error(f"--copy-chains/--copy-depth: {e}")
    cost = CostCurve.load(args.cost_curve) if args.cost_curve else None  # a malformed file fails before the model work

    dtype = model_dtype(args)
    model = MedusaModel.from_pretrained(args.model, base_model=args.base_model, dtype=dtype).to(args.device).eval()
    tokenizer = model.get_tokenizer()
    questions = load_questions(args.questions, args.limit)
    prompts = [render_chat(tokenizer, [{"role": "user", "content": q["turns"][0]}]) for q in questions]
    sequences = greedy_continuations(model.base_model, prompts, args.max_new_tokens, args.batch_size, tokenizer)
    all_hits, all_log_probs = zip(*[head_hits(model, s, args.top_k) for s in tqdm(sequences, desc="head predictions")])
    prompt_lens = [p.shape[1] for p in prompts]
    acc = accuracies(all_hits, prompt_lens)
    result = {"questions": len(questions), "new_tokens": sum(len(s) - n for s, n in zip(sequences, prompt_lens)),
              "top1": acc[:, 0].tolist(), "top5": acc[:, :5].sum(1).tolist(), "accuracy": acc.tolist(),
              "copy_chains": args.copy_chains, "copy_depth": args.copy_depth, "trees": {}}
    num_heads = model.config.medusa_num_heads
    trees = {"default": resolve_medusa_choices(None, num_heads)}
    trees |= {name: [] if name == "none" else resolve_medusa_choices(name, num_heads) for name in args.trees}
    grown = {}  # name -> tree grown from the accuracies; the last one goes to --tree-output
    if args.build_tree:
        grown[f"built_{args.build_tree}"] = build_tree(acc, args.build_tree)
    trees |= {f"built_{n}": build_tree(acc, n) for n in args.dynamic}
    if cost:
        policy = TreePolicy(acc, cost)
        result["policy"] = {}
        for batch_size in POLICY_BATCH_SIZES:
            tree, speedup = policy.expected_speedup(batch_size)
            nodes = 0 if tree == "none" else len(tree)
            result["policy"][str(batch_size)] = {"nodes": nodes, "expected_speedup": speedup}
            choice = f"{nodes} nodes" if nodes else "no tree (plain decoding)"
            print(f"policy at batch size {batch_size}: {choice}, expected speedup {speedup:.3f}x")
        if policy.choices(1) != "none":
            grown[f"policy_{len(policy.choices(1))}"] = policy.choices(1)
        elif args.tree_output:
            print("policy: no tree pays off at batch size 1; --tree-output gets " +
                  (f"built_{args.build_tree}" if args.build_tree else "nothing"))
    trees |= grown
    if args.tree_output and grown:
        with open(args.tree_output, "w") as f:
            json.dump(list(grown.values())[-1], f)
    head_lengths = {name: [head_accept_lengths(hits, tree) for hits in all_hits] for name, tree in trees.items()}
    head_lengths |= {f"dynamic_{n}": [dynamic_head_accept_lengths(hits, log_probs, n)
                                      for hits, log_probs in zip(all_hits, all_log_probs)] for n in args.dynamic}
    for name, lengths in head_lengths.items():
        tree = trees.get(name)
        result["trees"][name] = {
            "nodes": len(tree) if tree is not None else int(name.split("_")[1]),
            "tokens_per_step": tokens_per_step(sequences, lengths, prompt_lens, args.copy_chains, args.copy_depth),
            "heads_tokens_per_step": tokens_per_step(sequences, lengths, prompt_lens, 0, 0),
            "expected_tokens_per_step": expected_tokens_per_step(acc, tree) if tree is not None else None}
    for d in range(acc.shape[0]):
        print(f"head {d}: top-1 {result['top1'][d]:.3f}  top-5 {result['top5'][d]:.3f}")
    copies = f" + {args.copy_chains} copy chains of {args.copy_depth}" if args.copy_chains else ""
    for name, figures in result["trees"].items():
        estimate = figures["expected_tokens_per_step"]
        print(f"{name} ({figures['nodes']} nodes{copies}): {figures['tokens_per_step']:.3f} tokens/step, heads alone "
              f"{figures['heads_tokens_per_step']:.3f}" + ("" if estimate is None else f" (independence estimate {estimate:.3f})"))
    if args.output:
        with open(args.output, "w") as f:
            json.dump(result, f, indent=1)
    if args.save_policy:
        files = [os.path.join(args.model, name) for name in POLICY_FILES]
        policy.save(*files)
        print(f"tree policy written beside the heads: {', '.join(files)}")


if __name__ == "__main__":
    main_guard(main)
