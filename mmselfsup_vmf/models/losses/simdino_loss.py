"""SimDINO (CLS-token) and SimDINOv2 (masked-patch) losses.

Semantics follow the official code (RobinWu218/SimDINO at
8149fc4ed8ee3fd97b7bde900447414e6669e71b, ``MCRLoss`` and ``CosinePatchLoss.forward_masked``);
see docs/simdino.md#alignment-term, docs/simdino.md#coding-rate-term and
docs/simdino.md#simdinov2-masked-patch-loss.

CLS objective, minimised (V views, G = num_global teacher views, m images per rank,
n = m·N the global batch, d the feature size):

    comp = 1/(G·V − G) · Σ_g Σ_{v≠g} mean_b cos(t_{g,b}, s_{v,b})
    R_g  = ½ logdet(I_d + d/(n·eps) · Z_gᵀZ_g),  Z_g = (s_g + sg[t_g])/2  ('mean')
                                                  Z_g = s_g               ('student')
    loss = −coeff·comp − γ·mean_g R_g,            γ = (d + n)/(d·n) by default.

``rate_batch`` replaces n in α and γ (the rule for a small batch and width:
docs/simdino.md#small-batch-balance); ``global_comp`` (the cosine over global-crop pairs
only, the official v2 ``global_comp_loss``) is logged, not optimised.
"""
from typing import Dict, Optional, Sequence, Union

import torch
import torch.nn.functional as F
from mmpretrain.registry import MODELS
from torch import Tensor, nn

from ..utils.dist import global_batch_size
from .coding_rate import coding_rate
from .numerics import at_least_float32, autocast_off

EXPA_TYPES = ('mean', 'student')
_OFFICIAL_EXPA_TYPES = {0: 'student', 1: 'mean'}  # the official integer flag


def check_rate_batch(per_gpu_batch: int, who: str = 'SimDINO') -> None:
    """The coding rate of one sample per rank is degenerate: name the setting to change."""
    if per_gpu_batch < 2:
        raise ValueError(
            f'{who} needs at least 2 images per GPU for its coding-rate term, got a per-GPU '
            f'batch of {per_gpu_batch}; increase train_dataloader.batch_size')


def default_gamma(d: int, n: int) -> float:
    """The official balancing factor γ = (d + n)/(d·n) = 1/n + 1/d (n = global batch)."""
    return (d + n) / (d * n)


def check_rate_batch_override(rate_batch, who: str = 'model.loss.rate_batch') -> None:
    if rate_batch is not None and (isinstance(rate_batch, bool) or not isinstance(rate_batch, int)
                                   or rate_batch < 1):
        raise ValueError(f'{who} (SimDINOLoss) must be None (the global batch) or a '
                         f'positive int, the n used in alpha = d/(n*eps) and gamma = 1/n + '
                         f'1/d; got {rate_batch!r}')


def _stack_views(views, name: str) -> Tensor:
    if isinstance(views, Tensor):
        views = list(views.unbind(0)) if views.dim() == 3 else [views]
    if not isinstance(views, (list, tuple)) or not all(isinstance(v, Tensor) for v in views):
        raise TypeError(f'SimDINOLoss: {name} must be a sequence of (m, d) tensors')
    for i, v in enumerate(views):
        if v.dim() != 2 or v.shape != views[0].shape:
            raise ValueError(f'SimDINOLoss: {name} view {i} has shape {tuple(v.shape)}, '
                             f'expected (m, d) = {tuple(views[0].shape)} like view 0')
    return torch.stack(list(views))


def alignment_cosine(student: Tensor, teacher: Tensor) -> Tensor:
    """comp = 1/(G·V − G) Σ_g Σ_{v≠g} mean_b cos(t_{g,b}, s_{v,b}).

    Args:
        student: (V, m, d); views 0..G−1 are the global views matching the teacher's.
        teacher: (G, m, d), used as a constant (detached).
    """
    num_global, num_views = teacher.shape[0], student.shape[0]
    s = at_least_float32(student)
    t = at_least_float32(teacher.detach()).to(s.dtype)
    # cosine (not a plain dot product) as in SimDINO v1: robust to unnormalised inputs.
    with autocast_off(s.device.type):
        sim = F.cosine_similarity(t.unsqueeze(1), s.unsqueeze(0), dim=-1).mean(-1)  # (G, V)
    same_view = torch.eye(num_global, num_views, dtype=torch.bool, device=sim.device)
    return sim.masked_fill(same_view, 0).sum() / (num_global * num_views - num_global)


def global_alignment_cosine(student: Tensor, teacher: Tensor) -> Tensor:
    """The alignment over global-crop pairs only (g ≠ g', both global), a logged value:
    1/(G² − G) Σ_g Σ_{g'≠g} mean_b cos(t_{g,b}, s_{g',b}) (for G = 2 the official v2
    ``global_comp_loss``, which divides the same sum by G)."""
    with torch.no_grad():
        return alignment_cosine(student[:teacher.shape[0]], teacher)


def simdino_loss_terms(student: Union[Sequence[Tensor], Tensor],
                       teacher: Union[Sequence[Tensor], Tensor],
                       eps: float = 0.05,
                       coeff: float = 1.0,
                       expa_type: str = 'mean',
                       gamma: Optional[float] = None,
                       reduce_cov: bool = False,
                       num_global: int = 2,
                       rate_batch: Optional[int] = None) -> Dict[str, Tensor]:
    """The SimDINO CLS loss (module docstring) as a dict.

    Keys containing 'loss' sum to the objective: ``loss_comp`` = −coeff·comp,
    ``loss_expa`` = −γ·mean_g R_g; ``comp``, ``expa`` = γ·mean_g R_g (the official
    ``comp_loss`` / ``expa_loss``) and ``global_comp`` are detached logging values.
    ``rate_batch`` is the n of α and γ (None: the global batch).
    """
    s = _stack_views(student, 'student')
    t = _stack_views(teacher, 'teacher')
    if t.shape[0] != num_global:
        raise ValueError(f'SimDINOLoss: expected {num_global} teacher (global) views, '
                         f'got {t.shape[0]}')
    if s.shape[0] < num_global or s.shape[0] * num_global - num_global < 1:
        raise ValueError(f'SimDINOLoss: expected at least {num_global} student views '
                         f'(globals first, then locals), got {s.shape[0]}')
    if t.shape[1:] != s.shape[1:]:
        for g in range(num_global):  # name the first mismatching view
            if t[g].shape != s[g].shape:
                raise ValueError(
                    f'SimDINOLoss: teacher view {g} has shape {tuple(t[g].shape)} but '
                    f'student view {g} has shape {tuple(s[g].shape)}')
    m, d = s.shape[1], s.shape[2]
    check_rate_batch(m)
    if expa_type not in EXPA_TYPES:
        raise ValueError(f'SimDINOLoss: expa_type must be one of {EXPA_TYPES}, '
                         f'got {expa_type!r}')

    comp = alignment_cosine(s, t)

    student_global = at_least_float32(s[:num_global])
    if expa_type == 'mean':
        # not renormalised; the teacher half is a constant, as in the official code
        rate_features = (student_global + t.detach().to(student_global.dtype)) / 2
    else:
        rate_features = student_global
    check_rate_batch_override(rate_batch)
    n = global_batch_size(m) if rate_batch is None else rate_batch
    # non-finite values propagate as NaN: the divergence guard names iteration and term
    rates = coding_rate(rate_features, eps, n=n, reduce_cov=reduce_cov,
                        check_values=False)  # (G,)
    gamma = default_gamma(d, n) if gamma is None else float(gamma)
    expa = gamma * rates.mean()
    terms = dict(loss_comp=-coeff * comp, loss_expa=-expa, comp=comp.detach(),
                 expa=expa.detach())
    if num_global > 1:  # one global view has no global pair
        terms['global_comp'] = global_alignment_cosine(s, t)
    return terms


@MODELS.register_module()
class SimDINOLoss(nn.Module):
    """SimDINO CLS-token loss: −coeff·cosine alignment − γ·coding rate.

    Args:
        eps: ε² of the coding rate (official ``--eps``; published runs 0.05).
        coeff: weight of the alignment term (official ``--coeff``).
        expa_type: 'mean' (official default 1): rate of (student + teacher)/2 per global
            view, gradient through the student half; 'student' (official 0): rate of
            the student global features (paper form). The integers 1/0 are accepted.
        gamma: weight of the rate term; None = (d + n)/(d·n), n = global batch.
        reduce_cov: all-reduce ZᵀZ over ranks (rate of the global batch). The official
            default False uses the local covariance with α and γ from the global n.
        num_global: number of global views (teacher views).
        rate_batch: the n in α = d/(n·eps) and γ = 1/n + 1/d; None (default, official)
            = the global batch. The small-scale study sets it by the balance rule of
            docs/simdino.md#small-batch-balance (``benchmarks/bench_simdino_balance.py``).
    """

    def __init__(self,
                 eps: float = 0.05,
                 coeff: float = 1.0,
                 expa_type: Union[str, int] = 'mean',
                 gamma: Optional[float] = None,
                 reduce_cov: bool = False,
                 num_global: int = 2,
                 rate_batch: Optional[int] = None) -> None:
        super().__init__()
        check_rate_batch_override(rate_batch)
        if not isinstance(expa_type, str) and expa_type in _OFFICIAL_EXPA_TYPES:
            expa_type = _OFFICIAL_EXPA_TYPES[expa_type]
        if expa_type not in EXPA_TYPES:
            raise ValueError(f'model.loss.expa_type (SimDINOLoss) must be one of {EXPA_TYPES} '
                             f'(or the official 1/0), got {expa_type!r}')
        if not isinstance(eps, (int, float)) or not eps > 0:
            raise ValueError(f'model.loss.eps (SimDINOLoss, = ε²) must be > 0, got {eps!r}')
        if gamma is not None and not (isinstance(gamma, (int, float)) and gamma >= 0):
            raise ValueError(f'model.loss.gamma (SimDINOLoss) must be None or a float >= 0, '
                             f'got {gamma!r}')
        if int(num_global) != num_global or num_global < 1:
            raise ValueError(f'model.loss.num_global (SimDINOLoss) must be >= 1, '
                             f'got {num_global!r}')
        self.eps = float(eps)
        self.coeff = float(coeff)
        self.expa_type = expa_type
        self.gamma = None if gamma is None else float(gamma)
        self.reduce_cov = bool(reduce_cov)
        self.num_global = int(num_global)
        self.rate_batch = rate_batch

    def forward(self, student: Sequence[Tensor],
                teacher: Sequence[Tensor]) -> Dict[str, Tensor]:
        """student: V views (m, d) ordered [global0, global1, local0, ...];
        teacher: the num_global global views (m, d), detached here."""
        return simdino_loss_terms(student, teacher, eps=self.eps, coeff=self.coeff,
                                  expa_type=self.expa_type, gamma=self.gamma,
                                  reduce_cov=self.reduce_cov, num_global=self.num_global,
                                  rate_batch=self.rate_batch)

    def extra_repr(self) -> str:
        return (f'eps={self.eps}, coeff={self.coeff}, expa_type={self.expa_type!r}, '
                f'gamma={self.gamma}, reduce_cov={self.reduce_cov}, '
                f'num_global={self.num_global}, rate_batch={self.rate_batch}')


# ----------------------------------------------------------------------------------------
# SimDINOv2 masked-patch term (no coding rate on patches)
# ----------------------------------------------------------------------------------------
def patch_mask_weights(masks: Tensor, dtype: torch.dtype = torch.float32) -> Tensor:
    """Per-masked-token weights 1/|M_i|, in the order of ``tokens[masks]`` (row-major).

    This is the ``masks_weight`` the DINOv2/SimDINOv2 collate function precomputes.
    """
    if not isinstance(masks, Tensor) or masks.dim() != 2 or masks.dtype != torch.bool:
        raise ValueError('patch_mask_weights: masks must be a (B, N) bool tensor, got '
                         f'{getattr(masks, "shape", type(masks).__name__)}')
    per_image = 1.0 / masks.sum(-1).clamp(min=1).to(dtype)
    return per_image.unsqueeze(-1).expand_as(masks)[masks]


def masked_patch_cosine_loss_gathered(student_masked: Tensor, teacher_masked: Tensor,
                                      weights: Tensor, num_images: int) -> Tensor:
    """L = −(1/B_g) Σ_k w_k cos(s_k, t_k) over already-gathered masked tokens.

    The official ``CosinePatchLoss.forward_masked`` form: (K, d) tokens, per-token weights
    w_k = 1/|M_i| of the image i the token comes from, and ``num_images`` = B_g, the
    number of *all* global-crop images (unmasked ones included). Teacher is detached.
    """
    if student_masked.dim() != 2 or student_masked.shape != teacher_masked.shape:
        raise ValueError(
            'masked_patch_cosine_loss_gathered: expected matching (K, d) tokens, got '
            f'student {tuple(student_masked.shape)} and teacher {tuple(teacher_masked.shape)}')
    if weights.shape != student_masked.shape[:1]:
        raise ValueError(f'masked_patch_cosine_loss_gathered: weights of shape '
                         f'{tuple(weights.shape)}, expected ({student_masked.shape[0]},)')
    if int(num_images) != num_images or num_images < 1:
        raise ValueError(f'masked_patch_cosine_loss_gathered: num_images must be >= 1, '
                         f'got {num_images!r}')
    s = at_least_float32(student_masked)
    t = at_least_float32(teacher_masked.detach()).to(s.dtype)
    with autocast_off(s.device.type):
        cos = F.cosine_similarity(s, t, dim=-1)
    return -(cos * weights.to(cos.dtype)).sum() / num_images


def masked_patch_cosine_loss(student_tokens: Tensor, teacher_tokens: Tensor,
                             masks: Tensor) -> Tensor:
    """L = −(1/B_g) Σ_i (1/|M_i|) Σ_{p∈M_i} cos(s_{i,p}, t_{i,p}).

    Args:
        student_tokens, teacher_tokens: (B_g, N, d) head outputs of the global crops
            (student on masked input, teacher on unmasked input; teacher detached).
        masks: (B_g, N) bool; images without masked patches contribute 0 but still
            count in B_g.
    """
    if student_tokens.dim() != 3 or student_tokens.shape != teacher_tokens.shape:
        raise ValueError(
            'masked_patch_cosine_loss: expected matching (B, N, d) tokens, got student '
            f'{tuple(student_tokens.shape)} and teacher {tuple(teacher_tokens.shape)}')
    if masks.dtype != torch.bool or masks.shape != student_tokens.shape[:2]:
        raise ValueError(f'masked_patch_cosine_loss: masks must be bool of shape '
                         f'{tuple(student_tokens.shape[:2])}, got {masks.dtype} '
                         f'{tuple(masks.shape)}')
    return masked_patch_cosine_loss_gathered(
        student_tokens[masks], teacher_tokens[masks],
        patch_mask_weights(masks, at_least_float32(student_tokens).dtype),
        num_images=masks.shape[0])
