"""Training monitor for prototype methods (DINO, DINO-vMF, iBOT, iBOT-vMF).

Logs the precision spread of the student prototypes, the teacher's entropy and how many
prototypes its argmax uses, and warns once on the two collapse signatures
(docs/methods.md#collapse-signatures): a near-uniform teacher (loss stuck at ln K) and a
one-prototype teacher. On the logger's interval it also logs how much the teacher's
assignment says about the image, I(x;k) = H(p̄) − E[H(p)], and how redundant the prototypes
are (pairwise cosines, groups of near-duplicates). Everything is local to the process (no
collective operation): each rank measures its own batch.
"""
import math
from typing import Dict, Optional, Sequence

import torch
from mmengine.hooks import Hook, LoggerHook
from mmpretrain.registry import HOOKS
from mmpretrain.utils import get_ori_model

from ...models.losses.centering import ProbabilityCenter

# (prefix of the algorithm's output keys, attribute of the loss module that produced them,
#  which prototype layer of the head the student uses for them)
BRANCHES = (('', 'loss_module', False), ('patch_', 'patch_loss_module', True))


def kappa_quantiles(norms: torch.Tensor, temperature: float,
                    quantiles: Sequence[float] = (0.05, 0.5, 0.95)) -> Dict[str, float]:
    r"""Quantiles of the vMF precisions :math:`\kappa_k = \lVert w_k\rVert / \tau`.

    Linear interpolation between order statistics (numpy's default). Keys are ``q05``,
    ``q50``, ``q95`` (the quantile in percent, two digits).
    """
    kappa = norms.detach().double().flatten() / temperature
    values = torch.quantile(kappa, torch.tensor(list(quantiles), dtype=kappa.dtype,
                                                device=kappa.device))
    return {f'q{round(100 * q):02d}': float(v) for q, v in zip(quantiles, values)}


def entropy_of(probs: torch.Tensor) -> float:
    """Shannon entropy (nats) of a probability vector, renormalised to sum 1."""
    p = probs.detach().double().flatten()
    p = p / p.sum()
    return float(-(p * torch.log(p.clamp_min(1e-300))).sum())


def mutual_information(probs: torch.Tensor) -> Dict[str, float]:
    """I(x;k) = H(p̄) − E_x[H(p(·|x))] (nats) of an (N, K) matrix of per-image assignment
    distributions, with p̄ their mean; also returns H(p̄) and E[H(p)].

    With N images H(p̄) ≤ ln K and I ≤ ln N: a batch estimate is comparable only at equal N.
    """
    p = probs.detach().double().reshape(-1, probs.shape[-1])
    p = p / p.sum(-1, keepdim=True)
    mean_entropy = float(-(p * torch.log(p.clamp_min(1e-300))).sum(-1).mean())
    pbar = entropy_of(p.mean(0))
    return dict(mutual_information=pbar - mean_entropy, pbar_entropy=pbar,
                mean_entropy=mean_entropy)


def prototype_redundancy(weight: torch.Tensor, threshold: float = 0.9) -> Dict[str, float]:
    """Pairwise cosines of the K prototype vectors (rows of ``weight``) and their groups of
    near-duplicates: connected components of the graph "cos > threshold".

    Returns the mean and maximum off-diagonal cosine, ``dup_groups`` (components with at
    least two prototypes) and ``dup_members`` (prototypes in them).
    """
    w = weight.detach().double()
    w = w / w.norm(dim=1, keepdim=True).clamp_min(1e-300)
    k = w.shape[0]
    cos = w @ w.T
    off = ~torch.eye(k, dtype=torch.bool, device=w.device)
    adjacent = (cos > threshold) & off
    # component label = the smallest index reachable; min-label propagation until stable
    labels = torch.arange(k, device=w.device)
    while True:
        neighbour = torch.where(adjacent, labels.unsqueeze(0), k).min(1).values
        new = torch.minimum(labels, neighbour)
        if torch.equal(new, labels):
            break
        labels = new
    sizes = torch.bincount(labels, minlength=k)
    grouped = sizes >= 2
    return dict(cos_mean=float(cos[off].mean()) if k > 1 else 0.0,
                cos_max=float(cos[off].max()) if k > 1 else 0.0,
                dup_groups=int(grouped.sum()), dup_members=int(sizes[grouped].sum()))


def _scalar(value) -> float:
    return float(value.detach().float().mean()) if isinstance(value, torch.Tensor) else float(value)


def _num_images(data_batch) -> Optional[int]:
    if not isinstance(data_batch, dict):
        return None
    samples = data_batch.get('data_samples')
    if samples is not None:
        return len(samples)
    inputs = data_batch.get('inputs')
    if isinstance(inputs, (list, tuple)) and inputs and isinstance(inputs[0], torch.Tensor):
        return inputs[0].shape[0]
    return inputs.shape[0] if isinstance(inputs, torch.Tensor) else None


def _logger_interval(runner, default: int) -> int:
    for hook in runner.hooks:
        if isinstance(hook, LoggerHook):
            return max(1, int(getattr(hook, 'interval', default)))
    return default


@HOOKS.register_module()
class PrototypeMonitorHook(Hook):
    """Logs prototype statistics and warns once when the teacher collapses.

    Every ``interval`` training iterations it puts into the message hub (so the logger and
    the visualiser backends pick them up):

    * ``train/kappa_q05``, ``train/kappa_q50``, ``train/kappa_q95``: quantiles of the student
      precisions ``||w_k|| / tau_s`` (``patch_kappa_*`` for a separate iBOT patch layer);
    * ``train/pbar_entropy`` (``patch_pbar_entropy``): entropy of the probability centre
      when probability centering is on.

    On the logger's interval (``LoggerHook.interval``) only:

    * ``train/proto_cos_mean``, ``train/proto_cos_max``, ``train/proto_dup_groups``,
      ``train/proto_dup_members`` (``patch_*`` for a separate patch layer): pairwise cosines
      of the student prototypes and their groups of near-duplicates (cosine above
      ``redundancy_threshold``; ``prototype_redundancy``);
    * ``train/teacher_mi``, ``train/teacher_pbar_entropy``: I(x;k) = H(p̄) − E[H(p)] and
      H(p̄) of the (centred) teacher assignment of the batch's first global view, from one
      extra no-grad teacher forward (CLS tokens; a batch estimate, ``mutual_information``).

    The teacher entropy and the number of distinct teacher argmax prototypes in the batch
    are returned by the algorithm (``teacher_entropy``, ``teacher_unique_argmax``, and
    ``patch_*`` for iBOT) and logged by mmengine; this hook reads them from ``outputs`` and
    warns once per branch when

    * the entropy exceeds ``uniform_ratio * ln K`` (near-uniform teacher), or
    * the argmax uses at most one prototype over a batch of at least ``min_batch`` images.

    Args:
        interval (int, optional): iterations between two prototype-statistics updates and
            collapse checks (each reads the device); None: the logger's interval.
        quantiles (Sequence[float]): which kappa quantiles to log. Defaults to (0.05, 0.5, 0.95).
        uniform_ratio (float): the near-uniform threshold as a fraction of ln K. Defaults to 0.98.
        min_batch (int): smallest batch (images) for the one-prototype warning. Defaults to 8.
        redundancy_threshold (float): cosine above which two prototypes count as
            near-duplicates. Defaults to 0.9.
        assignment_stats (bool): log I(x;k) (one extra teacher forward on the logger's
            interval). Defaults to True.
    """

    priority = 'NORMAL'

    def __init__(self,
                 interval: Optional[int] = None,
                 quantiles: Sequence[float] = (0.05, 0.5, 0.95),
                 uniform_ratio: float = 0.98,
                 min_batch: int = 8,
                 redundancy_threshold: float = 0.9,
                 assignment_stats: bool = True):
        if interval is not None and int(interval) < 1:
            raise ValueError(f'PrototypeMonitorHook: interval must be >= 1, got {interval}')
        if not all(0.0 <= q <= 1.0 for q in quantiles):
            raise ValueError(f'PrototypeMonitorHook: quantiles must be in [0, 1], got '
                             f'{tuple(quantiles)}')
        if not 0.0 < uniform_ratio <= 1.0:
            raise ValueError(f'PrototypeMonitorHook: uniform_ratio must be in (0, 1], got '
                             f'{uniform_ratio}')
        self.interval = None if interval is None else int(interval)
        self.quantiles = tuple(quantiles)
        self.uniform_ratio = float(uniform_ratio)
        self.min_batch = int(min_batch)
        if not -1.0 <= redundancy_threshold < 1.0:
            raise ValueError(f'PrototypeMonitorHook: redundancy_threshold must be in [-1, 1), '
                             f'got {redundancy_threshold}')
        self.redundancy_threshold = float(redundancy_threshold)
        self.assignment_stats = bool(assignment_stats)
        self.warned = set()

    # ----------------------------------------------------------------- statistics
    def prototype_stats(self, model) -> Dict[str, float]:
        """kappa quantiles and probability-centre entropies of the (unwrapped) model."""
        stats = {}
        head = getattr(model, 'head', None)
        for prefix, loss_attr, patch in BRANCHES:
            loss = getattr(model, loss_attr, None)
            if loss is None:
                continue
            center = getattr(loss, 'center', None)
            if isinstance(center, ProbabilityCenter):
                stats[f'{prefix}pbar_entropy'] = entropy_of(center.center)
            norms_fn = getattr(head, 'prototype_norms', None)
            temp = getattr(loss, 'student_temp', None)
            if norms_fn is None or temp is None:
                continue
            if patch and getattr(head, 'last_layer2', None) is None:
                continue  # shared head: the patch precisions are the CLS ones
            with torch.no_grad():
                norms = norms_fn(patch=patch)
            if norms is None:
                continue
            for key, value in kappa_quantiles(norms, temp, self.quantiles).items():
                stats[f'{prefix}kappa_{key}'] = value
        return stats

    def redundancy_stats(self, model) -> Dict[str, float]:
        """``prototype_redundancy`` of the student's prototype layer(s)."""
        stats = {}
        head = getattr(model, 'head', None)
        layers = (('', getattr(head, 'last_layer', None)),
                  ('patch_', getattr(head, 'last_layer2', None)))
        for prefix, layer in layers:
            if layer is None:
                continue
            with torch.no_grad():
                found = prototype_redundancy(layer.weight, self.redundancy_threshold)
            stats.update({f'{prefix}proto_{k}': v for k, v in found.items()})
        return stats

    @torch.no_grad()
    def assignment_information(self, model, data_batch) -> Dict[str, float]:
        """I(x;k) of the teacher's centred assignment on the batch's first global view."""
        loss = getattr(model, 'loss_module', None)
        teacher = getattr(getattr(model, 'teacher', None), 'module', None)
        if (not isinstance(data_batch, dict) or teacher is None
                or not callable(getattr(loss, 'teacher_distribution', None))
                or not callable(getattr(model, 'embed', None))):
            return {}
        head = teacher['head']
        norms = head.prototype_norms()
        if norms is None:
            return {}
        was_training = model.training
        model.eval()
        try:
            inputs = model.data_preprocessor(data_batch, False)['inputs']
            x = inputs[0] if isinstance(inputs, (list, tuple)) else inputs
            cls, _ = model.embed(teacher, x)
            q, _ = loss.teacher_distribution(head(cls), model.teacher_temperature(), norms)
        finally:
            model.train(was_training)
        found = mutual_information(q)
        return dict(teacher_mi=found['mutual_information'],
                    teacher_pbar_entropy=found['pbar_entropy'])

    def collapse_warnings(self, model, outputs: dict, num_images: Optional[int]) -> list:
        """(key, message) of every collapse signature present in ``outputs``."""
        found = []
        for prefix, loss_attr, _ in BRANCHES:
            loss = getattr(model, loss_attr, None)
            num_prototypes = getattr(loss, 'num_prototypes', None)
            entropy = outputs.get(f'{prefix}teacher_entropy')
            unique = outputs.get(f'{prefix}teacher_unique_argmax')
            name = 'patch teacher' if prefix else 'teacher'
            if entropy is not None and num_prototypes and num_prototypes > 1:
                limit = self.uniform_ratio * math.log(num_prototypes)
                if _scalar(entropy) > limit:
                    found.append((f'{prefix}uniform', (
                        f'{name} distribution is near uniform: entropy {_scalar(entropy):.4f} > '
                        f'{self.uniform_ratio} ln K = {limit:.4f} (K={num_prototypes}); the '
                        'loss will sit at ln K (uniform collapse)')))
            if unique is not None and num_images is not None and num_images >= self.min_batch:
                if _scalar(unique) <= 1:
                    found.append((f'{prefix}one_prototype', (
                        f'{name} argmax uses {int(_scalar(unique))} prototype over a batch of '
                        f'{num_images} images (one-prototype collapse)')))
        return found

    # ----------------------------------------------------------------- hook
    def after_train_iter(self, runner, batch_idx: int, data_batch=None, outputs=None) -> None:
        model = get_ori_model(runner.model)
        log_interval = _logger_interval(runner, 50)
        interval = self.interval or log_interval
        if not self.every_n_train_iters(runner, interval):
            return
        for key, value in self.prototype_stats(model).items():
            runner.message_hub.update_scalar(f'train/{key}', value)
        if self.every_n_train_iters(runner, log_interval):
            stats = self.redundancy_stats(model)
            if self.assignment_stats:
                stats.update(self.assignment_information(model, data_batch))
            for key, value in stats.items():
                runner.message_hub.update_scalar(f'train/{key}', value)
        if not outputs:
            return
        for key, message in self.collapse_warnings(model, outputs, _num_images(data_batch)):
            if key not in self.warned:
                self.warned.add(key)
                runner.logger.warning(f'PrototypeMonitorHook (iter {runner.iter + 1}): '
                                      f'{message}. This warning is shown once.')
