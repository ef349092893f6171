"""Posterior evaluation: which tree path to accept, and how much of it (DESIGN.md §4).

All functions take the base logits gathered along the tree's paths, ``logits[p, i]`` being the
base model's prediction after token i of path p, and return ``(best_path, accept_length)`` as 0-d
long tensors: path ``best_path`` is accepted up to and including its ``accept_length``-th
non-root token.
"""

import torch


def _accepted_prefix(accept: torch.Tensor) -> torch.Tensor:
    """``[paths, depth]`` bool -> ``[paths, depth]`` long, 1 while every token so far was accepted."""
    return torch.cumprod(accept.long(), dim=1)


def evaluate_posterior_greedy(logits: torch.Tensor, candidates: torch.Tensor, path_valid: torch.Tensor):
    """Accept a token while it equals the argmax of the base logits before it.

    Args:
        logits: ``[paths, depth + 1, V]``; candidates, path_valid: ``[paths, depth + 1]``.
    """
    accept = (candidates[:, 1:] == logits[:, :-1].argmax(-1)) & path_valid[:, 1:]
    lengths = _accepted_prefix(accept).sum(1)
    best = lengths.argmax()
    return best, lengths[best]


def typical_threshold(probs: torch.Tensor, posterior_threshold: float, posterior_alpha: float) -> torch.Tensor:
    """``min(epsilon, alpha * exp(-H(p)))`` over the last dim of ``probs``."""
    entropy = -(probs * torch.log(probs.clamp_min(torch.finfo(probs.dtype).tiny))).sum(-1)
    return torch.minimum(torch.full_like(entropy, posterior_threshold), posterior_alpha * torch.exp(-entropy))


def evaluate_posterior_typical(logits: torch.Tensor, candidates: torch.Tensor, path_valid: torch.Tensor,
                               temperature: float, posterior_threshold: float = 0.09, posterior_alpha: float = 0.3):
    """Typical acceptance (lossy by design): accept x if p(x) > min(epsilon, alpha * exp(-H(p))).

    p is the base distribution at temperature ``temperature``. Among the longest accepted paths the
    one with the largest summed log-probability of its accepted tokens wins.
    """
    probs = torch.softmax(logits[:, :-1].float() / temperature, dim=-1)
    cand_probs = probs.gather(-1, candidates[:, 1:, None]).squeeze(-1)
    accept = (cand_probs > typical_threshold(probs, posterior_threshold, posterior_alpha)) & path_valid[:, 1:]
    prefix = _accepted_prefix(accept)
    lengths = prefix.sum(1)
    log_likelihood = (torch.log(cand_probs.clamp_min(torch.finfo(cand_probs.dtype).tiny)) * prefix).sum(1)
    score = torch.where(lengths == lengths.max(), log_likelihood, torch.full_like(log_likelihood, -torch.inf))
    best = score.argmax()
    return best, lengths[best]
