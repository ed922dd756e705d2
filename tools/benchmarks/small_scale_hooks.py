"""Evaluation-only hooks of the small-scale study (``tools/benchmarks/small_scale.py``).

``PrototypeUsageProbeHook`` measures how many prototypes the teacher uses on a fixed set of
un-augmented test images, so that DINO and DINO-vMF can be compared on the same inputs over
training (the training log's per-batch statistics are on random crops)::

    q_i = teacher distribution of image i (centred, current teacher temperature)
    p_bar = mean_i q_i
    effective number = exp(H(p_bar)),  H(p) = -sum_k p_k ln p_k      (between 1 and K)
    distinct argmax  = |{argmax_k q_ik}|
    I(x;k)           = H(p_bar) - mean_i H(q_i)  (what the assignment says about the image;
                       exp(H(p_bar)) alone also grows with how soft each q_i is)

At the end of training it also stores every student precision kappa_k = ||w_k|| / tau_s
(the quantity that PrototypeMonitorHook summarises by quantiles) and the redundancy of the
teacher's prototypes (pairwise cosines, groups above 0.9: ``prototype_redundancy``). It
does not change the
model or the training; models without prototypes (SimDINO, SimDINOv2) are skipped.

``SessionStartHook`` remembers the iteration a training session starts from (after mmengine
has resumed, which ``Runner.train`` does before the loop's ``before_train``), so that a
resumed run's throughput counts only the iterations trained in the measured session.

``InitEvalHook`` evaluates the run's network before its first iteration (random init) with
the final protocol, so a random-init row costs one evaluation and no extra model build.
"""
import json
import math
import os
import os.path as osp
from typing import List, Optional

import torch
from mmengine.hooks import Hook
from mmpretrain.registry import HOOKS
from mmpretrain.utils import get_ori_model

from mmselfsup_vmf.engine.hooks.prototype_monitor import (
    mutual_information,
    prototype_redundancy,
)


def effective_number(probs: torch.Tensor) -> float:
    """exp(H(p_bar)) of the mean of the rows of an (N, K) probability matrix."""
    p_bar = probs.double().mean(0)
    p_bar = p_bar / p_bar.sum()
    return math.exp(float(-(p_bar * torch.log(p_bar.clamp_min(1e-300))).sum()))


@HOOKS.register_module()
class SessionStartHook(Hook):
    """``self.iter``: ``runner.iter`` when training starts (the resumed iteration, or 0)."""

    priority = 'VERY_HIGH'
    iter = 0

    def before_train(self, runner) -> None:
        self.iter = runner.iter


class InitEvalHook(Hook):
    """Before the first iteration: ``evaluate(model)`` (a dict of scores) written to
    ``path`` with its ``seconds``; a resumed session (iteration > 0) keeps the first
    session's file. ``seconds`` is this session's evaluation time (0 when skipped)."""

    priority = 'LOW'

    def __init__(self, evaluate, path: str):
        self.evaluate, self.path, self.seconds = evaluate, path, 0.0

    def before_train(self, runner) -> None:
        if runner.iter > 0 and osp.isfile(self.path):
            return
        import time
        model = get_ori_model(runner.model)
        was_training = model.training
        model.eval()
        start = time.time()
        try:
            with torch.no_grad():
                result = self.evaluate(model)
        finally:
            model.train(was_training)
        self.seconds = time.time() - start
        result['seconds'] = self.seconds
        tmp = self.path + '.tmp'
        with open(tmp, 'w') as f:
            json.dump(result, f)
        os.replace(tmp, self.path)


@HOOKS.register_module()
class PrototypeUsageProbeHook(Hook):
    """Teacher prototype utilisation on fixed probe images every ``interval`` iterations.

    Args:
        dataset (dict): a labelled, un-augmented dataset config (the first ``num_images``
            images are the probe set).
        num_images (int): probe images. Defaults to 2000.
        interval (int): iterations between measurements (also before training and at the
            end). Defaults to 200.
        out_file (str): JSON file in the work dir; reloaded on resume. Defaults to
            'prototype_usage.json'.
    """
    priority = 'LOW'

    def __init__(self, dataset: dict, num_images: int = 2000, interval: int = 200,
                 out_file: str = 'prototype_usage.json'):
        self.dataset_cfg = dataset
        self.num_images = int(num_images)
        self.interval = int(interval)
        self.out_file = out_file
        self.history: List[dict] = []
        self.kappa: Optional[List[float]] = None
        self.redundancy: Optional[dict] = None
        self._batch = None

    def _path(self, runner) -> str:
        return osp.join(runner.work_dir, self.out_file)

    def _supported(self, model) -> bool:
        head = getattr(model, 'head', None)
        loss = getattr(model, 'loss_module', None)
        return (callable(getattr(head, 'prototype_norms', None))
                and head.prototype_norms() is not None
                and callable(getattr(loss, 'teacher_distribution', None)))

    def _probe_batch(self, runner) -> dict:
        if self._batch is None:
            from mmengine.dataset import default_collate
            from mmpretrain.registry import DATASETS
            dataset = DATASETS.build(self.dataset_cfg)
            n = min(self.num_images, len(dataset))
            self._batch = default_collate([dataset[i] for i in range(n)])
        return self._batch

    @torch.no_grad()
    def measure(self, runner) -> dict:
        model = get_ori_model(runner.model)
        was_training = model.training
        model.eval()
        try:
            data = model.data_preprocessor(self._probe_batch(runner), False)
            inputs = data['inputs']
            x = inputs[0] if isinstance(inputs, (list, tuple)) else inputs
            teacher = model.teacher.module
            cls, _ = model.embed(teacher, x)
            head = teacher['head']
            q, _ = model.loss_module.teacher_distribution(
                head(cls), model.teacher_temperature(), head.prototype_norms())
        finally:
            model.train(was_training)
        entropy = -(q * torch.log(q.clamp_min(1e-30))).sum(-1).mean()
        return dict(effective_number=effective_number(q),
                    distinct_argmax=int(q.argmax(-1).unique().numel()),
                    mean_entropy=float(entropy), num_prototypes=int(q.shape[-1]),
                    mutual_information=mutual_information(q)['mutual_information'])

    def _save(self, runner) -> None:
        path = self._path(runner)
        tmp = path + '.tmp'
        with open(tmp, 'w') as f:
            json.dump(dict(history=self.history, kappa=self.kappa,
                           redundancy=self.redundancy), f)
        os.replace(tmp, path)

    def before_train(self, runner) -> None:
        path = self._path(runner)
        if osp.isfile(path):  # resumed run: keep the measurements made before the restart
            with open(path) as f:
                self.history = [h for h in json.load(f)['history'] if h['iter'] <= runner.iter]
        if not self.history or self.history[-1]['iter'] != runner.iter:
            self._record_at(runner, runner.iter)

    def after_train_iter(self, runner, batch_idx: int, data_batch=None, outputs=None) -> None:
        # the loop increments runner.iter after this hook
        if (runner.iter + 1) % self.interval == 0:
            self._record_at(runner, runner.iter + 1)

    def _record_at(self, runner, step: int) -> None:
        model = get_ori_model(runner.model)
        if not self._supported(model):
            return
        row = self.measure(runner)
        row['iter'] = step
        row['epoch'] = step / max(1, len(runner.train_dataloader))
        self.history.append(row)
        self._save(runner)

    def after_train(self, runner) -> None:
        model = get_ori_model(runner.model)
        if not self._supported(model):
            return
        if not self.history or self.history[-1]['iter'] != runner.iter:
            self._record_at(runner, runner.iter)
        norms = model.head.prototype_norms().detach().double()
        self.kappa = (norms / model.loss_module.student_temp).tolist()
        with torch.no_grad():
            self.redundancy = prototype_redundancy(
                model.teacher.module['head'].last_layer.weight)
        self._save(runner)
