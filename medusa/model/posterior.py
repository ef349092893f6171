"""Posterior evaluation: which tree path to accept, and how much of it.

See docs/design.md, "The decode step".

Greedy and typical acceptance take the base predictions (argmax, or logits) gathered along the
tree's paths, entry ``[..., p, i]`` being the base model's after token i of path p (leading dims: the
batch), and return ``(best_path, accept_length)`` as long tensors of the leading shape: path
``best_path`` is accepted up to and including its ``accept_length``-th non-root token. Lossless
sampling walks the tree node by node and also returns the next root (docs/sampling.md).
"""

import torch

from .sampling import sampling_probs
from .tree import TreeBuffers

# Typical acceptance's defaults (epsilon and alpha), the paper's.
POSTERIOR_THRESHOLD = 0.09
POSTERIOR_ALPHA = 0.3


def leading_accepted(accept: torch.Tensor) -> torch.Tensor:
    """``[..., depth]`` bool -> ``[...]`` long: how many leading entries are True (the accepted prefix's length).

    The first False of ``accept`` padded with one False column: a reduction, which a compiler fuses with the
    comparisons before it (a cumulative product is a scan, which inductor's CPU code ran as a library call).
    """
    return (~torch.nn.functional.pad(accept, (0, 1), value=False)).int().argmax(-1)


def evaluate_posterior_greedy(predictions: torch.Tensor, candidates: torch.Tensor, path_valid: torch.Tensor):
    """Accept a token while it equals the base model's greedy prediction before it.

    Args:
        predictions: ``[..., paths, depth + 1]`` argmax of the base logits along each path;
        candidates: ``[..., paths, depth + 1]``; path_valid: ``[paths, depth + 1]``.
    """
    accept = (candidates[..., 1:] == predictions[..., :-1]) & path_valid[:, 1:]
    lengths = leading_accepted(accept)
    return lengths.argmax(-1), lengths.amax(-1)


def typical_threshold(probs: torch.Tensor, posterior_threshold: float, posterior_alpha: float) -> torch.Tensor:
    """``min(epsilon, alpha * exp(-H(p)))`` over the last dim of ``probs``."""
    entropy = -(probs * torch.log(probs.clamp_min(torch.finfo(probs.dtype).tiny))).sum(-1)
    return torch.minimum(torch.full_like(entropy, posterior_threshold), posterior_alpha * torch.exp(-entropy))


def evaluate_posterior_typical(logits: torch.Tensor, candidates: torch.Tensor, path_valid: torch.Tensor,
                               temperature: float, posterior_threshold: float = POSTERIOR_THRESHOLD,
                               posterior_alpha: float = POSTERIOR_ALPHA,
                               top_k: int = 0, top_p: float = 1.0):
    """Typical acceptance (lossy by design): accept x if p(x) > min(epsilon, alpha * exp(-H(p))).

    p is the base distribution (:func:`~medusa.model.sampling.sampling_probs`). Among the longest
    accepted paths the one with the largest summed log-probability of its accepted tokens wins.
    """
    probs = sampling_probs(logits[..., :-1, :], temperature, top_k, top_p)
    cand_probs = probs.gather(-1, candidates[..., 1:, None]).squeeze(-1)
    accept = (cand_probs > typical_threshold(probs, posterior_threshold, posterior_alpha)) & path_valid[:, 1:]
    lengths = leading_accepted(accept)
    prefix = torch.arange(accept.shape[-1], device=accept.device) < lengths[..., None]
    log_likelihood = (torch.log(cand_probs.clamp_min(torch.finfo(cand_probs.dtype).tiny)) * prefix).sum(-1)
    longest = lengths.amax(-1, keepdim=True)
    score = torch.where(lengths == longest, log_likelihood, torch.full_like(log_likelihood, -torch.inf))
    return score.argmax(-1), longest[..., 0]


def rejection_chain(probs: torch.Tensor, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Recursive rejection at one tree node whose children propose the distinct ``tokens``.

    The children are tried in order: child i is accepted with probability ``r_i(x_i)``, r_i being
    ``probs`` with ``x_1 .. x_{i-1}`` removed and renormalised; if all are rejected the token is drawn
    from ``probs`` with every child removed (the residual). The output token is then distributed
    exactly as ``probs``: child i is output with probability
    ``prod_{j<i} (1 - r_j(x_j)) * r_i(x_i) = p(x_i)`` (the product telescopes to ``1 - sum_{j<i} p(x_j)``)
    and any other token y with probability ``(1 - sum_j p(x_j)) * p(y) / (1 - sum_j p(x_j)) = p(y)``.

    Args:
        probs: ``[V]`` the base distribution at the node; tokens: ``[c]`` its children's tokens.

    Returns:
        accept ``[c]`` (``r_i(x_i)``) and the residual ``[V]`` (unnormalised weights).
    """
    masses = probs[tokens]
    residual = probs.index_fill(0, tokens, 0)
    # r_i(x_i) = p(x_i) / (p(x_i) + p(later children) + p(rest)): exactly 1 when nothing is left after
    # x_i, so an all-rejected walk never reaches an empty residual.
    left = masses.flip(0).cumsum(0).flip(0) + residual.sum()
    return masses / left.clamp_min(torch.finfo(left.dtype).tiny), residual


def evaluate_posterior_lossless(tree_logits: torch.Tensor, tree_candidates: torch.Tensor, buffers: TreeBuffers,
                                temperature: float, top_k: int = 0, top_p: float = 1.0,
                                generator: torch.Generator | None = None):
    """Tree speculative sampling: the emitted tokens are distributed as sampling from the base model.

    Walk down from the root: at each node, with p its base distribution, run :func:`rejection_chain`
    over its children's distinct tokens (fixed before p is seen: the next head's top-k, the copy
    branches' next token). An accepted token is emitted and the walk continues below it; otherwise the
    bonus token is drawn from the residual (from p itself at a leaf) and becomes the next step's root.
    Each token emitted after a prefix is distributed as p at that prefix, so the output is exact
    ancestral sampling.

    A copy branch may propose a token that a head node beside it proposes too. Both nodes then stand
    for the same prefix, so the walk treats them as one: their children are pooled, and the path it
    returns may continue from either (their cache entries are the same).

    Args:
        tree_logits: ``[T, V]`` base logits at one row's tree nodes; tree_candidates: ``[T]`` their tokens.
        generator: all randomness (on the logits' device).

    Returns:
        ``(path, accept_length, next_root)``: ``[depth + 1]`` node indices whose first
        ``accept_length + 1`` hold the accepted tokens (root first; padded with 0), the accepted depth
        (0-d), and the bonus token (0-d).
    """
    tokens = tree_candidates.tolist()
    nodes, path = [0], [0]  # nodes: every tree node standing for the accepted prefix
    while True:
        probs = sampling_probs(tree_logits[nodes[0]], temperature, top_k, top_p)
        by_token: dict[int, list[int]] = {}
        for child in (c for n in nodes for c in buffers.children[n]):
            by_token.setdefault(tokens[child], []).append(child)
        if not by_token:
            residual = probs
            break
        proposed = list(by_token)
        accept, residual = rejection_chain(probs, torch.tensor(proposed, device=probs.device))
        accepted = torch.rand(len(proposed), generator=generator, device=probs.device) < accept
        hits = accepted.nonzero().flatten().tolist()  # the first hit is the token accepted in rank order
        if not hits:
            break
        nodes = by_token[proposed[hits[0]]]
        path.append(nodes[0])
    device = tree_logits.device
    padded = torch.tensor(path + [0] * (buffers.depth + 1 - len(path)), device=device)
    return padded, torch.tensor(len(path) - 1, device=device), torch.multinomial(residual, 1, generator=generator)[0]
