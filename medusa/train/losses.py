"""Medusa training losses: per-head shifted cross-entropy or distillation, accuracies, λ_k, KL."""

import torch
import torch.nn.functional as F

from .data import IGNORE_INDEX


def head_weights(num_heads: int, decay: float) -> list[float]:
    """λ_k = decay**k for heads k = 0..num_heads-1 (1.0 = the plain sum of the reference script)."""
    return [decay**k for k in range(num_heads)]


def medusa_head_losses(head_logits: torch.Tensor, labels: torch.Tensor, teacher_logits: torch.Tensor | None = None,
                       distillation: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-head losses and hit counts; head k predicts ``labels[t + k + 2]`` from position t.

    With ``distillation`` α > 0, head k's loss is (1 − α)·CE_k + α·KL(p_base ‖ q_k), where p_base is the
    base model's distribution at position t + k + 1, i.e. its prediction of the very token head k
    predicts at t: a soft label that also ranks the runners-up a tree verifies.

    Args:
        head_logits: ``[heads, B, S, V]``.
        labels: ``[B, S]`` with ``IGNORE_INDEX`` where there is no target.
        teacher_logits: ``[B, S, V]`` base-model logits of the same sequences (needed when α > 0).
        distillation: α in [0, 1].

    Returns:
        losses ``[heads]`` (mean over each head's valid targets, 0 when it has none, in fp32) and stats
        ``[heads, 4]`` = (valid targets, top-1 hits, top-5 hits, summed CE) for logging, without grad.
    """
    if distillation and teacher_logits is None:
        raise ValueError("distillation > 0 needs the base model's teacher_logits")
    losses, stats = [], []
    for k in range(head_logits.shape[0]):
        shift = k + 2
        target = labels[:, shift:]  # [B, S - shift]
        valid = target != IGNORE_INDEX
        count = valid.sum()
        # Only the positions with a target go to fp32: on chat data with padding, a fraction of all. The
        # fp32 copy and what the loss keeps for its backward are each [n, V] per head.
        logits = head_logits[k, :, :-shift][valid].float()  # [n, V]
        target = target[valid]  # [n]
        ce_sum = F.cross_entropy(logits, target, reduction="sum")
        loss = ce = ce_sum / count.clamp(min=1)
        if distillation:
            kl = distillation_kl(logits, teacher_logits[:, shift - 1:-1][valid])
            loss = (1 - distillation) * ce + distillation * kl
        losses.append(loss)
        with torch.no_grad():
            hits = logits.topk(min(5, logits.shape[-1]), dim=-1).indices == target[:, None]  # [n, 5]
            stats.append(torch.stack([count.float(), hits[:, 0].sum().float(), hits.any(-1).sum().float(), ce_sum]))
    return torch.stack(losses), torch.stack(stats)


def distillation_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
    """KL(teacher ‖ student) of next-token distributions ``[n, V]`` (one per row), averaged over the rows."""
    student = F.log_softmax(student_logits.float(), dim=-1)
    teacher = F.log_softmax(teacher_logits.float(), dim=-1)
    kl = F.kl_div(student, teacher, log_target=True, reduction="sum")
    return kl / max(student.shape[0], 1)
