"""The training loss, built from ``OptimConfig``: cross-entropy for one label per image, binary
cross-entropy or the asymmetric loss on each class's logit for several (multi-label data), with
the per-class weights of ``optim.class_weights``.

With many classes each image is a negative for almost all of them, and the sum of many easy
negatives swamps the few positives in plain BCE. The asymmetric loss down-weights easy
negatives (focusing with ``gamma_neg``) and ignores very easy ones outright (the probability
shift ``clip``), while leaving the positives' gradient as in BCE (``gamma_pos=0``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from imgcls.config import OptimConfig
from imgcls.errors import ImgclsError


def create_loss(cfg: OptimConfig, class_weights: Sequence[float] | None = None, *,
                multilabel: bool = False) -> nn.Module:
    """``optim.loss`` on logits (:func:`loss_kind`): cross-entropy with
    ``optim.label_smoothing``, or binary cross-entropy / the asymmetric loss on each class's
    logit. ``class_weights`` (training only; None: unweighted, as evaluation always is) are
    :func:`resolve_class_weights`'s: cross-entropy's per-class weights (torch averages a batch
    as ``sum(w_y * loss) / sum(w_y)``), or the binary losses' weights of the positive labels.
    """
    kind = loss_kind(cfg, multilabel)
    weight = None if class_weights is None else torch.tensor(class_weights, dtype=torch.float32)
    if kind == "cross_entropy":
        return nn.CrossEntropyLoss(weight=weight, label_smoothing=cfg.label_smoothing)
    if kind == "asl":
        return PerClassLoss(AsymmetricLoss(cfg.asl_gamma_neg, cfg.asl_gamma_pos, cfg.asl_clip,
                                           pos_weight=weight, reduction="none"))
    return PerClassLoss(nn.BCEWithLogitsLoss(pos_weight=weight, reduction="none"))


def loss_kind(cfg: OptimConfig, multilabel: bool) -> str:
    """``optim.loss`` resolved for the data: ``auto`` is ``bce`` for multi-label data and
    ``cross_entropy`` otherwise; a softmax over classes cannot say "several" or "none", so
    multi-label data refuses ``cross_entropy``, and label smoothing is cross-entropy's only."""
    kind = cfg.loss if cfg.loss != "auto" else ("bce" if multilabel else "cross_entropy")
    if multilabel and kind == "cross_entropy":
        raise ImgclsError("optim.loss=cross_entropy picks one class per image, and this data "
                          "has several labels per image; use optim.loss=bce or asl")
    if kind != "cross_entropy" and cfg.label_smoothing > 0:
        raise ImgclsError(f"optim.label_smoothing={cfg.label_smoothing:g} is for "
                          f"optim.loss=cross_entropy, and this run's loss is {kind}")
    return kind


class PerClassLoss(nn.Module):
    """A binary loss on each class's logit (BCE, the asymmetric loss; ``inner`` gives one value
    per element), taking a batch's labels as they come: multi-hot rows (uint8, or float when
    MixUp/CutMix mixed them) or, on single-label data, class indices (one-hot).

    The batch's loss is summed over classes and averaged over images. Averaging over classes
    too (``BCEWithLogitsLoss``'s default) would give each logit 1/K of the gradient that
    cross-entropy gives it, so recipes tuned for cross-entropy (fast_small's learning rate)
    would train K times slower on multi-label data; per image, the sum is on cross-entropy's
    scale, as in Ridnik et al.'s and timm's multi-label training.
    """

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        if targets.dim() == 1:
            targets = nn.functional.one_hot(targets, logits.shape[1])
        return self.inner(logits.float(), targets.to(torch.float32)).sum(dim=1).mean()


def resolve_class_weights(cfg: OptimConfig, counts: Sequence[int],
                          images: int | None = None) -> list[float] | None:
    """``optim.class_weights`` for a training part with ``counts[c]`` images of class ``c``;
    None for ``none``. Multi-label data (``images``: the training images, each counted in
    every class it has) with ``auto`` gets each class's negatives / positives, capped
    (:func:`positive_weights`): the weight of its positive labels
    in the binary loss.

    ``auto``: inverse class frequency, ``w_c = N / (K * n_c)`` over the K classes that have
    training images, which makes the mean weight per training image 1 (``sum n_c w_c = N``): a
    weight reads as "this class's image counts w times an average image", and the loss keeps
    the unweighted loss's scale. A class with no training image gets 0 (it is never a target).
    A list is used as given, one weight per class.

    >>> weights = resolve_class_weights(OptimConfig(class_weights="auto"), [30, 10, 20])
    >>> [round(w, 3) for w in weights]
    [0.667, 2.0, 1.0]
    """
    spec = cfg.class_weights
    if spec == "none":
        return None
    if spec == "auto" and images is not None:
        return positive_weights(counts, images)
    if spec == "auto":
        total, present = sum(counts), sum(1 for n in counts if n > 0)
        return [total / (present * n) if n > 0 else 0.0 for n in counts]
    weights = [float(w) for w in spec]
    if len(weights) != len(counts):
        raise ImgclsError(f"optim.class_weights has {len(weights)} weights but the data has "
                          f"{len(counts)} classes: give one per class")
    return weights


class AsymmetricLoss(nn.Module):
    """Ridnik et al., "Asymmetric Loss For Multi-Label Classification" (ICCV 2021).

    Per element, with p = sigmoid(logit) and the shifted negative probability
    p_m = max(p - clip, 0)::

        loss = -(y * pos_weight * (1 - p)^gamma_pos * log(p)
                 + (1 - y) * p_m^gamma_neg * log(1 - p_m))

    with both logs clamped at log(eps), as in the authors' implementation. ``reduction`` is
    torch's (``mean`` over all elements, ``sum``, or ``none``), so that at
    ``gamma_neg = gamma_pos = clip = 0`` it equals ``nn.BCEWithLogitsLoss(pos_weight=...)``
    with the same reduction; training reduces it as :class:`PerClassLoss` does. Soft targets
    (MixUp, label smoothing) weight the two terms by y and 1 - y, as BCE does.

    Gradients flow through the focusing weights, as in the authors' ``AsymmetricLoss`` (their
    optional ``disable_torch_grad_focal_loss`` is off by default and not offered here). The loss
    is computed in float32 with autocast off, whatever the input dtype.

    >>> loss = AsymmetricLoss()(torch.zeros(2, 3), torch.tensor([[1.0, 0, 0], [0, 1, 0]]))
    """

    pos_weight: torch.Tensor | None

    def __init__(
        self,
        gamma_neg: float = 4.0,
        gamma_pos: float = 0.0,
        clip: float = 0.05,
        pos_weight: torch.Tensor | None = None,
        eps: float = 1e-8,
        reduction: str = "mean",
    ) -> None:
        super().__init__()
        if reduction not in ("mean", "sum", "none"):
            raise ValueError(f"reduction must be mean, sum or none, got {reduction!r}")
        self.reduction = reduction
        if gamma_neg < 0 or gamma_pos < 0 or not 0 <= clip < 1 or not 0 < eps < 1:
            raise ValueError(
                f"need gamma_neg, gamma_pos >= 0, 0 <= clip < 1, 0 < eps < 1; got "
                f"gamma_neg={gamma_neg}, gamma_pos={gamma_pos}, clip={clip}, eps={eps}"
            )
        self.gamma_neg, self.gamma_pos = float(gamma_neg), float(gamma_pos)
        self.clip, self.eps = float(clip), float(eps)
        # A buffer, like BCEWithLogitsLoss's, so that .to(device) moves it with the module.
        self.register_buffer("pos_weight", None if pos_weight is None else pos_weight.float())

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device_type=logits.device.type, enabled=False):
            x, y = logits.float(), targets.float()
            log_eps = math.log(self.eps)
            # logsigmoid(+-x) is log(p) and log(1 - p) without the rounding of 1 - p near 1.
            log_p = F.logsigmoid(x).clamp(min=log_eps)
            if self.clip > 0:
                p_neg = (torch.sigmoid(x) - self.clip).clamp(min=0)
                log_not_p_neg = torch.log((1 - p_neg).clamp(min=self.eps))
            else:
                p_neg = torch.sigmoid(x)
                log_not_p_neg = F.logsigmoid(-x).clamp(min=log_eps)
            pos = log_p * _focus(torch.sigmoid(-x), self.gamma_pos)
            neg = log_not_p_neg * _focus(p_neg, self.gamma_neg)
            if self.pos_weight is not None:
                pos = pos * self.pos_weight.to(x.device)
            loss = -(y * pos + (1 - y) * neg)
            if self.reduction == "none":
                return loss
            return loss.mean() if self.reduction == "mean" else loss.sum()


def _focus(base: torch.Tensor, gamma: float) -> torch.Tensor | float:
    """base ** gamma, the focusing weight; the base is floored at the smallest normal float so
    that gamma < 1 cannot give an infinite gradient (times zero: NaN) where base underflows."""
    if gamma == 0:
        return 1.0
    return base.clamp(min=torch.finfo(base.dtype).tiny) ** gamma


def positive_weights(positives: Sequence[int], total: int, cap: float = 100.0) -> list[float]:
    """BCE's ``pos_weight`` per class: negatives / positives, capped at ``cap`` so that a very
    rare class does not dominate the gradient; a class with no positive gets ``cap``.

    Used for ``optim.class_weights=auto`` on multi-label data.

    >>> positive_weights([10, 1, 0], total=100, cap=50.0)
    [9.0, 50.0, 50.0]
    """
    if total < 0 or any(not 0 <= p <= total for p in positives):
        raise ValueError(f"need 0 <= positives <= total, got {list(positives)} of {total}")
    return [float(min((total - p) / p, cap)) if p > 0 else float(cap) for p in positives]
