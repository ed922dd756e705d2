"""Online weighted k-NN accuracy of the model's features during training."""
from typing import Dict, Optional, Sequence, Union

import torch
from mmengine.hooks import Hook
from mmpretrain.registry import HOOKS
from mmpretrain.utils import get_ori_model

from mmselfsup_vmf.evaluation.knn import extract_features, flat_input_pixels, knn_accuracy


@HOOKS.register_module()
class KNNHook(Hook):
    """Log the weighted k-NN accuracy (DINO protocol) every ``interval`` epochs.

    The model must implement ``knn_features(data_batch: dict, key: str) -> (B, D) Tensor``
    (it preprocesses the batch itself and returns e.g. the teacher's CLS features). Features
    are extracted in eval mode under ``torch.no_grad``; the previous train/eval mode is
    restored afterwards. Dataloaders are built once, on first use.

    Results go to: ``runner.logger`` (one line that also states the protocol),
    ``runner.message_hub`` (``{prefix}/top1`` ...), and every visualiser backend through
    ``runner.visualizer.add_scalars(..., step=<iterations done>)`` with the same ``file_path`` as
    mmengine's ``LoggerHook``, so the values land in ``vis_data/<timestamp>.json``,
    ``vis_data/scalars.json`` and TensorBoard/W&B when configured. (Scalars put under
    ``train/`` in the message hub would be re-logged at every logging iteration instead.)
    The last result is kept as ``hook.last_result``.

    Args:
        train_dataloader (dict | DataLoader): labelled "memory bank" set (no augmentation).
        val_dataloader (dict | DataLoader): labelled query set.
        interval (int): evaluate every ``interval`` epochs (iterations if ``by_epoch=False``)
            and always after the last one. Defaults to 1.
        k (int | Sequence[int]): neighbours; a sequence logs ``{prefix}/k{k}/top1`` for each.
        temperature (float): T of the vote weights exp(s / T). Defaults to 0.07.
        key (str): which features ``knn_features`` returns ('teacher' or 'student').
        prefix (str): metric name prefix. Defaults to 'knn'.
        before_train (bool): also evaluate before the first iteration (random-init
            baseline; logged as "at resume (iteration N)" in a resumed run). Defaults to False.
        by_epoch (bool): count ``interval`` in epochs (True) or iterations. Defaults to True.
        num_classes (int, optional): defaults to ``len(dataset.metainfo['classes'])`` of the
            train set, else ``max(label) + 1``.
        chunk_size (int, optional): test rows per similarity block (see ``knn_accuracy``).
        device (str, optional): where the k-NN runs; defaults to the CPU.
        progress (bool): show a progress bar during feature extraction.
    """
    priority = 'LOW'  # after the optimizer/EMA hooks of the same stage

    def __init__(self,
                 train_dataloader: Union[dict, object],
                 val_dataloader: Union[dict, object],
                 interval: int = 1,
                 k: Union[int, Sequence[int]] = 20,
                 temperature: float = 0.07,
                 key: str = 'teacher',
                 prefix: str = 'knn',
                 before_train: bool = False,
                 by_epoch: bool = True,
                 num_classes: Optional[int] = None,
                 chunk_size: Optional[int] = None,
                 device: Optional[str] = None,
                 progress: bool = False):
        if int(interval) < 1:
            raise ValueError(f'KNNHook: interval must be >= 1, got {interval}')
        if not temperature > 0:
            raise ValueError(f'KNNHook: temperature must be > 0, got {temperature}')
        self._loader_cfgs = dict(train=train_dataloader, val=val_dataloader)
        self._loaders = None
        self.interval = int(interval)
        self.k = k if isinstance(k, int) else tuple(k)
        self.temperature = float(temperature)
        self.key = key
        self.prefix = prefix
        self.eval_before_train = before_train
        self.by_epoch = by_epoch
        self.num_classes = num_classes
        self.chunk_size = chunk_size
        self.device = device
        self.progress = progress
        self.last_result: Optional[Dict[str, float]] = None
        self.history = []  # [(stage, result), ...] for tools/demo.py's before/after summary

    # ---- triggers -------------------------------------------------------------------------
    def before_train(self, runner) -> None:
        if self.eval_before_train:
            # a resumed run starts from trained weights: not a random-init baseline
            stage = f'at resume (iteration {runner.iter})' if runner.iter else 'before training'
            self.evaluate(runner, stage=stage, step=runner.iter)

    def after_train_epoch(self, runner) -> None:
        if self.by_epoch and (self.every_n_epochs(runner, self.interval)
                              or self.is_last_train_epoch(runner)):
            self.evaluate(runner, stage=f'epoch {runner.epoch + 1}', step=runner.iter)

    def after_train_iter(self, runner, batch_idx: int, data_batch=None, outputs=None) -> None:
        if not self.by_epoch and (self.every_n_train_iters(runner, self.interval)
                                  or self.is_last_train_iter(runner)):
            # The loop increments runner.iter only after this hook.
            self.evaluate(runner, stage=f'iter {runner.iter + 1}', step=runner.iter + 1)

    # ---- work -----------------------------------------------------------------------------
    def loaders(self, runner) -> dict:
        """The bank ('train') and query ('val') dataloaders, built on first use."""
        if self._loaders is None:
            from mmengine.runner import Runner
            self._loaders = {
                name: Runner.build_dataloader(cfg, seed=runner.seed)
                for name, cfg in self._loader_cfgs.items()
            }
        return self._loaders

    def _infer_num_classes(self, loader, train_labels: torch.Tensor,
                           val_labels: torch.Tensor) -> int:
        if self.num_classes is not None:
            return int(self.num_classes)
        classes = getattr(getattr(loader, 'dataset', None), 'metainfo', {}).get('classes')
        if classes:
            return len(classes)
        return int(max(train_labels.max(), val_labels.max())) + 1

    def evaluate(self, runner, stage: str = '', step: Optional[int] = None) -> Dict[str, float]:
        """Extract train/val features, compute and log the k-NN accuracy; return it."""
        loaders = self.loaders(runner)
        model = get_ori_model(runner.model)
        if not callable(getattr(model, 'knn_features', None)):
            raise TypeError(f'KNNHook needs {type(model).__name__}.knn_features(data_batch, '
                            'key) -> (B, D) features')
        was_training = runner.model.training
        runner.model.eval()
        try:
            with torch.no_grad():
                feats = {
                    name: extract_features(lambda batch: model.knn_features(batch, self.key),
                                           loader, progress=self.progress)
                    for name, loader in loaders.items()
                }
        finally:
            runner.model.train(was_training)
        (train_f, train_y), (val_f, val_y) = feats['train'], feats['val']
        num_classes = self._infer_num_classes(loaders['train'], train_y, val_y)
        device = torch.device(self.device or 'cpu')
        acc = knn_accuracy(train_f.to(device), train_y.to(device), val_f.to(device),
                           val_y.to(device), num_classes, k=self.k,
                           temperature=self.temperature, chunk_size=self.chunk_size)
        result = {f'{self.prefix}/{name}': value for name, value in acc.items()}
        step = runner.iter if step is None else step
        self._log(runner, result, stage, step, len(train_y), len(val_y))
        self.last_result = result
        self.history.append((stage, result))
        return result

    def evaluate_raw_inputs(self, runner) -> Dict[str, float]:
        """The same k-NN on the flattened input images of the same loaders (the raw-pixel
        baseline a learned feature has to beat); returned, not logged."""
        loaders = self.loaders(runner)
        (train_f, train_y), (val_f, val_y) = (
            extract_features(flat_input_pixels, loaders[name]) for name in ('train', 'val'))
        num_classes = self._infer_num_classes(loaders['train'], train_y, val_y)
        acc = knn_accuracy(train_f, train_y, val_f, val_y, num_classes, k=self.k,
                           temperature=self.temperature, chunk_size=self.chunk_size)
        return {f'{self.prefix}/{name}': value for name, value in acc.items()}

    def _log(self, runner, result: Dict[str, float], stage: str, step: int, num_train: int,
             num_val: int) -> None:
        for name, value in result.items():
            runner.message_hub.update_scalar(name, value)
        runner.visualizer.add_scalars(
            dict(result), step=step, file_path=f'{runner.timestamp}.json')
        values = ', '.join(f'{name}: {value:.2f}' for name, value in result.items())
        runner.logger.info(
            f'k-NN {stage} ({self.key} features, L2-normalised, cosine, k={self.k}, '
            f'T={self.temperature}, weighted vote; {num_train} train / {num_val} val): {values}')
