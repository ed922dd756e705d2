"""DINO / DINO-vMF prototype losses (CLS term) and the shared teacher/student distributions.

The maths is in pure functions; ``PrototypeDistillation`` holds the centre buffer and the
switches, ``DINOLoss`` is the multi-view cross-entropy of DINO (iBOT's patch term reuses the
same distributions, see ``ibot_loss.py``).
"""
from typing import Dict, List, Optional, Sequence

import torch
import torch.nn.functional as F
from mmengine.model import BaseModule
from mmpretrain.registry import MODELS

from ...arg_checks import check_fraction, check_int, check_positive
from .centering import LogitCenter, ProbabilityCenter
from .numerics import at_least_float32, autocast_off, prototype_usage_stats
from .vmf import _APPROXIMATIONS as VMF_APPROXIMATIONS
from .vmf import vmf_log_normalizer

CENTERINGS = ('logit', 'probability', 'none')


def prototype_logits(scores: torch.Tensor,
                     temperature: float,
                     prototype_norms: Optional[torch.Tensor] = None,
                     dim: Optional[int] = None,
                     approximation: str = 'exact') -> torch.Tensor:
    r"""Prototype logits, plain or with the vMF log-normaliser.

    .. math::
        l_k = \frac{\langle w_k, y\rangle}{\tau}
              + \Big[\log C_p\big(\tfrac{\lVert w_k\rVert}{\tau}\big)
                     - \log C_p\big(\tfrac{1}{\tau}\big)\Big]

    The bracket is used only when ``prototype_norms`` (shape (K,)) is given; ``p = dim`` is
    the bottleneck dimension. The subtracted constant does not change any softmax but keeps
    the numbers small (log C_256 is ~344). Computed in float32 (or float64) outside autocast.
    """
    logits = at_least_float32(scores) / temperature
    if prototype_norms is None:
        return logits
    if dim is None:
        raise ValueError('prototype_logits: `dim` (the bottleneck dimension p) is required '
                         'when prototype_norms are given')
    norms = at_least_float32(prototype_norms)
    if norms.shape[-1] != logits.shape[-1]:
        raise ValueError(f'prototype_norms has {norms.shape[-1]} entries but the scores have '
                         f'{logits.shape[-1]} prototypes')
    log_c = vmf_log_normalizer(norms / temperature, dim, approximation=approximation)
    # filled on the device: new_tensor would copy from the host and wait for the device
    unit = torch.full((), 1.0 / temperature, dtype=norms.dtype, device=norms.device)
    ref = vmf_log_normalizer(unit, dim, approximation=approximation)
    return logits + (log_c - ref).to(logits.dtype)


def multi_view_cross_entropy(teacher_probs: Sequence[torch.Tensor],
                             student_log_probs: Sequence[torch.Tensor]) -> torch.Tensor:
    r"""DINO's loss over every (teacher view i, student view v != i) pair.

    .. math::
        L = \frac{1}{|\mathcal P|} \sum_{(i, v) \in \mathcal P}
            \frac{1}{B} \sum_b \Big[-\sum_k q_{i,b,k} \log p_{v,b,k}\Big],
        \qquad \mathcal P = \{(i, v) : v \ne i\}.

    Teacher view ``i`` is the same image crop as student view ``i`` (the global crops come
    first in both lists), so those pairs are skipped.
    """
    total, terms = 0.0, 0
    for i, q in enumerate(teacher_probs):
        for v, log_p in enumerate(student_log_probs):
            if v == i:
                continue
            total = total + torch.sum(-q * log_p, dim=-1).mean()
            terms += 1
    if terms == 0:
        raise ValueError('DINO loss needs at least one (teacher, student) pair of different '
                         f'views; got {len(teacher_probs)} teacher and '
                         f'{len(student_log_probs)} student views')
    return total / terms


class PrototypeDistillation(BaseModule):
    """Teacher and student distributions over K prototypes, with centring and the vMF switch.

    Args:
        num_prototypes: K.
        student_temp: tau_s (0.1).
        center_momentum: EMA momentum of the centre (0.9).
        centering: ``'logit'`` (DINO, on the raw scores), ``'probability'`` (DINO-vMF's
            default) or ``'none'``.
        vmf: add the vMF log-normaliser ``log C_p(||w_k||/tau)`` on both sides.
        dim: p, the bottleneck (prototype) dimension, used by the vMF term.
        approximation: ``'exact'`` (default) or ``'debye'`` (the paper's leading term).
    """

    config_key = 'model.loss'  # named in argument errors

    def __init__(self,
                 num_prototypes: int,
                 student_temp: float = 0.1,
                 center_momentum: float = 0.9,
                 centering: str = 'logit',
                 vmf: bool = False,
                 dim: int = 256,
                 approximation: str = 'exact',
                 init_cfg=None):
        super().__init__(init_cfg=init_cfg)
        key = self.config_key
        if centering not in CENTERINGS:
            raise ValueError(f'{key}.centering must be one of {CENTERINGS}, got {centering!r}')
        if approximation not in VMF_APPROXIMATIONS:
            raise ValueError(f'{key}.approximation must be one of {VMF_APPROXIMATIONS}, got '
                             f'{approximation!r}')
        check_int(f'{key}.num_prototypes', num_prototypes)
        check_int(f'{key}.dim', dim, minimum=2 if vmf else 1)
        check_positive(f'{key}.student_temp', student_temp)
        check_fraction(f'{key}.center_momentum', center_momentum)
        self.num_prototypes, self.student_temp = num_prototypes, student_temp
        self.centering, self.vmf, self.dim = centering, vmf, dim
        self.approximation = approximation
        center_cls = ProbabilityCenter if centering == 'probability' else LogitCenter
        # 'none' still tracks a logit centre (cheap) so switching on resume keeps its key
        self.center = center_cls(num_prototypes, center_momentum)

    def check_norms(self, student_norms, teacher_norms) -> None:
        if self.vmf and (student_norms is None or teacher_norms is None):
            raise ValueError(f'{type(self).__name__}(vmf=True) needs student_norms and '
                             'teacher_norms; the head must have a prototype layer')

    def _logits(self, scores, temp, norms):
        return prototype_logits(scores, temp, norms if self.vmf else None, self.dim,
                                self.approximation)

    @torch.no_grad()
    def teacher_distribution(self, scores: torch.Tensor, temp: float,
                             norms: Optional[torch.Tensor] = None):
        """Returns (centred probabilities q, uncentred probabilities) of the teacher."""
        with autocast_off(scores.device.type):
            logits = self._logits(scores, temp, norms)
            raw = torch.softmax(logits, dim=-1)
            if self.centering == 'logit':
                centred = self._logits(self.center.center_scores(at_least_float32(scores)),
                                       temp, norms)
                return torch.softmax(centred, dim=-1), raw
            if self.centering == 'probability':
                return torch.softmax(self.center.center_logits(logits), dim=-1), raw
            return raw, raw

    def student_log_probs(self, scores: torch.Tensor,
                          norms: Optional[torch.Tensor] = None) -> torch.Tensor:
        with autocast_off(scores.device.type):
            return F.log_softmax(self._logits(scores, self.student_temp, norms), dim=-1)

    @torch.no_grad()
    def update_center(self, scores: torch.Tensor, raw_probs: torch.Tensor) -> None:
        """Update after the loss, from all teacher rows of the global batch."""
        self.center.update(scores, raw_probs)


@MODELS.register_module()
class DINOLoss(PrototypeDistillation):
    """DINO's CLS loss (``vmf=True, centering='probability'`` gives DINO-vMF).

    ``forward(student_scores, teacher_scores, teacher_temp, student_norms, teacher_norms)``
    takes per-view head scores ``<w_k, y>`` (student: all V views, globals first; teacher:
    the global views) and the prototype norms of each side (needed only with ``vmf``).
    Returns ``loss_dino`` and the detached ``teacher_entropy`` / ``teacher_unique_argmax`` of
    the centred teacher distribution.
    """

    def forward(self, student_scores: Sequence[torch.Tensor],
                teacher_scores: Sequence[torch.Tensor], teacher_temp: float,
                student_norms: Optional[torch.Tensor] = None,
                teacher_norms: Optional[torch.Tensor] = None) -> Dict[str, torch.Tensor]:
        self.check_norms(student_norms, teacher_norms)
        for i, s in enumerate(list(student_scores) + list(teacher_scores)):
            if s.shape[-1] != self.num_prototypes:
                raise ValueError(f'DINOLoss(num_prototypes={self.num_prototypes}) got scores '
                                 f'of shape {tuple(s.shape)} for view {i}')
        # all views of a side in one call: the vMF term is computed once per side, not once
        # per view (its many small (K,) ops dominated the vMF overhead with 12 views)
        teacher_all = torch.cat(list(teacher_scores))
        q_all, raw_all = self.teacher_distribution(teacher_all, teacher_temp, teacher_norms)
        qs: List[torch.Tensor] = list(q_all.split([t.shape[0] for t in teacher_scores]))
        log_ps = self.student_log_probs(torch.cat(list(student_scores)), student_norms).split(
            [s.shape[0] for s in student_scores])
        loss = multi_view_cross_entropy(qs, log_ps)
        self.update_center(at_least_float32(teacher_all.detach()), raw_all)
        return dict(loss_dino=loss, **prototype_usage_stats(q_all))
