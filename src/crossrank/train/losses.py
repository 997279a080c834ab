"""Ranking losses over groups: `logits` [lists, group] with a boolean `mask` marking real (non-padding) entries.

Pointwise BCE (graded labels as soft targets), pairwise RankNet (optionally |ΔNDCG|-weighted, LambdaLoss
style) and margin hinge, listwise softmax cross-entropy, and distillation from a teacher (KL over the list's
softmax, or MarginMSE). Every loss is the mean over lists (or pairs) that carry any signal.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from crossrank.train.loss_names import LABEL_LOSS_NAMES, TEACHER_LOSS_NAMES

NEG = -1e4


def _masked(logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return logits.masked_fill(~mask, NEG)


def pointwise_bce(logits: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor, max_label: float = 1.0) -> torch.Tensor:
    """Binary cross-entropy with label / max_label as a soft target (grade 2 of 0–3 → 0.67)."""
    targets = (labels / max_label).clamp(0, 1)
    losses = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    return losses[mask].mean()


def _pairs(labels: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """[lists, i, j] true where entry i is judged more relevant than entry j (both real)."""
    both = mask.unsqueeze(2) & mask.unsqueeze(1)
    return (labels.unsqueeze(2) > labels.unsqueeze(1)) & both


def _delta_ndcg(logits: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """|ΔNDCG| of swapping i and j in the current ranking (gain 2^rel − 1, log2 discount)."""
    order = torch.argsort(_masked(logits, mask).detach(), dim=1, descending=True)
    ranks = torch.empty_like(order)
    ranks.scatter_(1, order, torch.arange(order.shape[1], device=order.device).expand_as(order))
    discount = 1.0 / torch.log2(ranks.float() + 2.0)
    gains = (2.0 ** labels - 1.0) * mask
    ideal = torch.sort(gains, dim=1, descending=True).values
    idcg = (ideal / torch.log2(torch.arange(ideal.shape[1], device=ideal.device).float() + 2.0)).sum(1, keepdim=True)
    delta = (gains.unsqueeze(2) - gains.unsqueeze(1)) * (discount.unsqueeze(2) - discount.unsqueeze(1))
    return delta.abs() / idcg.clamp(min=1e-9).unsqueeze(2)


def ranknet(logits: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor, ndcg_weighted: bool = False) -> torch.Tensor:
    """Mean of log(1 + exp(s_j − s_i)) over pairs with label_i > label_j; LambdaLoss-style |ΔNDCG| weights."""
    pairs = _pairs(labels, mask)
    if not pairs.any():
        return logits.sum() * 0.0
    losses = F.softplus(logits.unsqueeze(1) - logits.unsqueeze(2))
    if ndcg_weighted:
        weights = _delta_ndcg(logits, labels, mask)
        return (losses * weights)[pairs].sum() / weights[pairs].sum().clamp(min=1e-9)
    return losses[pairs].mean()


def margin_hinge(logits: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor, margin: float = 1.0) -> torch.Tensor:
    """Mean of max(0, margin − (s_i − s_j)) over pairs with label_i > label_j."""
    pairs = _pairs(labels, mask)
    if not pairs.any():
        return logits.sum() * 0.0
    return F.relu(margin - (logits.unsqueeze(2) - logits.unsqueeze(1)))[pairs].mean()


def listwise_ce(logits: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Cross-entropy between the softmax over the list and the target distribution ∝ 2^label − 1; lists
    without any relevant entry are skipped."""
    gains = (2.0 ** labels - 1.0) * mask
    total = gains.sum(1)
    keep = total > 0
    if not keep.any():
        return logits.sum() * 0.0
    targets = gains[keep] / total[keep].unsqueeze(1)
    log_probs = F.log_softmax(_masked(logits, mask)[keep], dim=1)
    return -(targets * log_probs).sum(1).mean()


def kl_distillation(logits: torch.Tensor, teacher: torch.Tensor, mask: torch.Tensor,
                    temperature: float = 1.0) -> torch.Tensor:
    """KL(teacher ‖ student) between softmax(teacher / T) and softmax(student) over each list."""
    if temperature <= 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    target = F.softmax(_masked(teacher / temperature, mask), dim=1)
    log_student = F.log_softmax(_masked(logits, mask), dim=1)
    log_target = torch.log(target.clamp(min=1e-12))
    return (target * (log_target - log_student) * mask).sum(1).mean()


def margin_mse(logits: torch.Tensor, teacher: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """MarginMSE: the student's margins to the teacher's top entry match the teacher's margins (squared error)."""
    top = torch.argmax(_masked(teacher, mask), dim=1, keepdim=True)
    student_margin = logits.gather(1, top) - logits
    teacher_margin = teacher.gather(1, top) - teacher
    others = mask & (torch.arange(mask.shape[1], device=mask.device).unsqueeze(0) != top)
    if not others.any():
        return logits.sum() * 0.0
    return ((student_margin - teacher_margin) ** 2)[others].mean()


LABEL_LOSSES = {"bce": pointwise_bce, "ranknet": ranknet, "lambda": lambda s, y, m: ranknet(s, y, m, True),
                "hinge": margin_hinge, "listwise": listwise_ce}
TEACHER_LOSSES = {"kl": kl_distillation, "margin-mse": margin_mse}
assert tuple(LABEL_LOSSES) == LABEL_LOSS_NAMES and tuple(TEACHER_LOSSES) == TEACHER_LOSS_NAMES
