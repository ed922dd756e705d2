"""iBOT's masked-patch loss (the patch term of iBOT and iBOT-vMF).

The CLS term of iBOT is DINO's (``DINOLoss``); this module adds the patch term with its own
centre and the teacher patch temperature passed in by the algorithm. The distributions come
from ``PrototypeDistillation``, so the vMF term and the centring switch work as for DINO.
"""
from typing import Dict, Optional, Sequence

import torch
from mmpretrain.registry import MODELS

from .dino_loss import PrototypeDistillation
from .numerics import at_least_float32, prototype_usage_stats


def masked_patch_cross_entropy(teacher_probs: torch.Tensor,
                               student_log_probs: torch.Tensor,
                               mask: torch.Tensor) -> torch.Tensor:
    r"""Per-image mask-weighted cross-entropy of one view (iBOT's patch loss).

    .. math::
        \ell_b = \frac{\sum_n m_{b,n}\,\big[-\sum_k q_{b,n,k}\log p_{b,n,k}\big]}
                      {\max\big(\sum_n m_{b,n},\ 1\big)}

    Args:
        teacher_probs: q, (B, N, K) teacher patch distributions of the unmasked view.
        student_log_probs: log p, (B, N, K) student patch log-probabilities of the masked view.
        mask: m, (B, N) or (B, h, w), True (1) where the student's patch was masked.

    Returns:
        (B,) per-image losses; an image without masked patches contributes 0.
    """
    batch, num_patches = student_log_probs.shape[:2]
    mask = mask.reshape(mask.shape[0], -1)
    if tuple(mask.shape) != (batch, num_patches) or teacher_probs.shape != student_log_probs.shape:
        raise ValueError(f'patch loss shapes do not match: teacher {tuple(teacher_probs.shape)}, '
                         f'student {tuple(student_log_probs.shape)}, mask {tuple(mask.shape)} '
                         f'(expected ({batch}, {num_patches}) patches)')
    weights = mask.to(student_log_probs.dtype)
    per_patch = torch.sum(-teacher_probs * student_log_probs, dim=-1)
    return (per_patch * weights).sum(-1) / weights.sum(-1).clamp_min(1.0)


@MODELS.register_module()
class iBOTPatchLoss(PrototypeDistillation):  # noqa: N801  (the method's own spelling)
    """iBOT's patch term: teacher patches of global view g against the masked student view g.

    ``forward(student_scores, teacher_scores, masks, teacher_temp, student_norms,
    teacher_norms)`` takes per-global-view patch scores ``<w_k, y>`` of shape (B, N, K) (the
    same views in the same order on both sides), the (B, h, w) masks of the student views,
    the teacher *patch* temperature and, with ``vmf``, the norms of the prototypes that
    produced the patch scores on each side. The loss is the per-image mask-weighted mean
    (:func:`masked_patch_cross_entropy`), averaged over the batch, then over the views.

    The centre is iBOT's ``center2``: the teacher patch statistic averaged over the patches of
    each image, then over the images of all ranks; it is updated after the loss. Returns
    ``loss_patch`` and the detached ``patch_teacher_entropy`` / ``patch_teacher_unique_argmax``.
    Constructor arguments are ``PrototypeDistillation``'s (``num_prototypes`` is the patch K).
    """

    config_key = 'model.patch_loss'  # named in argument errors

    def forward(self, student_scores: Sequence[torch.Tensor],
                teacher_scores: Sequence[torch.Tensor], masks: Sequence[torch.Tensor],
                teacher_temp: float, student_norms: Optional[torch.Tensor] = None,
                teacher_norms: Optional[torch.Tensor] = None) -> Dict[str, torch.Tensor]:
        self.check_norms(student_norms, teacher_norms)
        if not (len(student_scores) == len(teacher_scores) == len(masks)) or not masks:
            raise ValueError(f'iBOTPatchLoss needs one student view, teacher view and mask per '
                             f'global view; got {len(student_scores)}, {len(teacher_scores)} '
                             f'and {len(masks)}')
        first = student_scores[0].shape
        for s in list(student_scores) + list(teacher_scores):
            if s.dim() != 3 or s.shape[-1] != self.num_prototypes:
                raise ValueError(f'iBOTPatchLoss(num_prototypes={self.num_prototypes}) needs '
                                 f'patch scores (B, N, {self.num_prototypes}), got '
                                 f'{tuple(s.shape)}')
            if s.shape[1:] != first[1:]:
                raise ValueError(f'iBOTPatchLoss: every view needs the same number of patches, '
                                 f'got {tuple(s.shape)} and {tuple(first)}')
        # all views in one call, so the vMF term is computed once per side
        sizes = [s.shape[0] for s in student_scores]
        teacher_all = torch.cat(list(teacher_scores))
        q, raw = self.teacher_distribution(teacher_all, teacher_temp, teacher_norms)
        log_p = self.student_log_probs(torch.cat(list(student_scores)), student_norms)
        mask = torch.cat([m.reshape(m.shape[0], -1) for m in masks])
        per_image = masked_patch_cross_entropy(q, log_p, mask)
        loss = torch.stack([v.mean() for v in per_image.split(sizes)]).mean()
        # iBOT's center2: mean over the patches of an image, then over all images (all ranks)
        self.update_center(at_least_float32(teacher_all.detach()).mean(1), raw.mean(1))
        return dict(loss_patch=loss, **prototype_usage_stats(q, prefix='patch_'))
