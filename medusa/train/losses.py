"""Medusa training losses (DESIGN.md §5): per-head shifted cross-entropy, accuracies, λ_k, KL."""

import torch
import torch.nn.functional as F

from .data import IGNORE_INDEX


def head_weights(num_heads: int, decay: float) -> list[float]:
    """λ_k = decay**k for heads k = 0..num_heads-1 (1.0 = the plain sum of the reference script)."""
    return [decay**k for k in range(num_heads)]


def medusa_head_losses(head_logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-head cross-entropy and top-1/top-5 hit counts; head k predicts ``labels[t + k + 2]`` from position t.

    Args:
        head_logits: ``[heads, B, S, V]``.
        labels: ``[B, S]`` with ``IGNORE_INDEX`` where there is no target.

    Returns:
        losses ``[heads]`` (mean CE over each head's valid targets, 0 when it has none, in fp32) and
        stats ``[heads, 3]`` = (valid targets, top-1 hits, top-5 hits) for logging, without grad.
    """
    losses, stats = [], []
    for k in range(head_logits.shape[0]):
        shift = k + 2
        logits = head_logits[k, :, :-shift].float().flatten(0, 1)  # [N, V]
        target = labels[:, shift:].flatten()  # [N]
        valid = target != IGNORE_INDEX
        count = valid.sum()
        ce = F.cross_entropy(logits, target, ignore_index=IGNORE_INDEX, reduction="sum")
        losses.append(ce / count.clamp(min=1))
        with torch.no_grad():
            top = logits[valid].topk(min(5, logits.shape[-1]), dim=-1).indices  # [n, 5]
            hits = top == target[valid, None]
            stats.append(torch.stack([count.float(), hits[:, 0].sum().float(), hits.any(-1).sum().float()]))
    return torch.stack(losses), torch.stack(stats)


def distillation_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """KL(teacher ‖ student) of the next-token distributions, averaged over positions where ``mask`` is true.

    Args:
        student_logits, teacher_logits: ``[B, S, V]``.
        mask: ``[B, S]`` bool, the positions whose next token is a target.
    """
    student = F.log_softmax(student_logits[mask].float(), dim=-1)
    teacher = F.log_softmax(teacher_logits[mask].float(), dim=-1)
    kl = F.kl_div(student, teacher, log_target=True, reduction="sum")
    return kl / mask.sum().clamp(min=1)
