"""SelfSupDataPreprocessor that attaches the iBOT / DINOv2 masks of the global views.

In training the masks come with the batch: ``masked_collate`` draws them in the loader
workers (``mmselfsup_vmf/datasets/masked_collate.py``, which says how they are seeded), the
loader pins them and they are copied here with ``non_blocking``, so the training process
does no mask work. A batch without masks (made by hand: tests, benchmarks, the equivalence
tool) gets them drawn here by the same law, from ``np.random.default_rng([seed, iter,
rank])``.
"""
from typing import Optional, Sequence

import numpy as np
import torch
from mmengine.dist import get_rank
from mmpretrain.models.utils.data_preprocessor import SelfSupDataPreprocessor
from mmpretrain.registry import MODELS

from .masking import global_grid, global_view_masks, mask_law


@MODELS.register_module()
class MaskedSelfSupDataPreprocessor(SelfSupDataPreprocessor):
    """Normalise every view (as the parent) and attach block masks of the global views.

    In training, each data sample gets a field ``mask``: a bool tensor
    ``(num_global_views, h, w)``, ``h = H // patch_size`` of the global views, where entry
    ``g`` is the mask of view ``g`` of that image: the batch's ``masks`` from
    ``masked_collate``, which must have been drawn with the same arguments (checked), or
    drawn here when the batch has none. Nothing is attached in eval mode
    (``training=False``) or without data samples. A ``mask`` the pipeline already set
    is overwritten.

    Args:
        patch_size (int): ViT patch size. Defaults to 16.
        num_global_views (int): the first views that get masks. Defaults to 2.
        mask_mode (str): 'ibot' (each global crop independently, iBOT) or 'stratified'
            (DINOv2/SimDINOv2: stratified over all ``num_global_views * B`` global crops of
            the batch on this rank). See :mod:`..masking`.
        mask_cfg (dict, optional): options of the mode, passed to
            :func:`generate_masks`, e.g. ``dict(pred_ratio=(0, 0.3), pred_ratio_var=(0, 0.2))``
            or ``dict(mask_probability=0.5, ratio_range=(0.1, 0.5))``.
        mask_start_epoch (int): iBOT ``pred_start_epoch``: before this epoch the masks are
            all False. Defaults to 0. The epoch and iteration come from
            :meth:`set_train_progress` (the algorithm forwards ``TrainProgressHook``'s call);
            both are 0 until then.
        seed (int): seed of the masks drawn here (batches without masks). Defaults to 0.
        non_blocking (bool): copy the batch to the device without waiting (from the
            loader's pinned memory). Defaults to True.
        **kwargs: ``SelfSupDataPreprocessor`` arguments (mean, std, to_rgb, ...).
    """

    def __init__(self,
                 patch_size: int = 16,
                 num_global_views: int = 2,
                 mask_mode: str = 'ibot',
                 mask_cfg: Optional[dict] = None,
                 mask_start_epoch: int = 0,
                 seed: int = 0,
                 non_blocking: bool = True,
                 **kwargs):
        super().__init__(non_blocking=non_blocking, **kwargs)
        self.law = mask_law(patch_size, num_global_views, mask_mode, mask_cfg, mask_start_epoch)
        self.mask_cfg = dict(mask_cfg or {})
        self.patch_size = patch_size
        self.num_global_views = num_global_views
        self.mask_mode = mask_mode
        self.mask_start_epoch = int(mask_start_epoch)
        self.seed = int(seed)
        self.epoch, self.iteration = 0, 0

    def set_train_progress(self, epoch: int, iteration: int) -> None:
        self.epoch, self.iteration = int(epoch), int(iteration)

    def mask_rng(self) -> np.random.Generator:
        """Generator seeded by (seed, global iteration, rank)."""
        return np.random.default_rng([self.seed, self.iteration, get_rank()])

    def global_view_masks(self, views: Sequence[torch.Tensor]) -> torch.Tensor:
        """Masks drawn here for the first ``num_global_views`` views, (B, G, h, w) bool."""
        if len(views) < self.num_global_views:
            raise ValueError(f'num_global_views={self.num_global_views} but the batch has '
                             f'{len(views)} view(s)')
        global_views = views[:self.num_global_views]
        sizes = {tuple(v.shape[-2:]) for v in global_views}
        if len(sizes) != 1:
            raise ValueError(f'the {self.num_global_views} global views must share one size, '
                             f'got {sorted(sizes)}')
        grid = global_grid(*sizes.pop(), self.patch_size)
        masks = global_view_masks(global_views[0].shape[0], grid, self.num_global_views,
                                  self.mask_mode, self.mask_rng(),
                                  self.epoch >= self.mask_start_epoch, **self.mask_cfg)
        return torch.from_numpy(masks).to(global_views[0].device)

    def batch_masks(self, masks: torch.Tensor, law: Optional[dict]) -> torch.Tensor:
        """The masks ``masked_collate`` drew, on the device (non-blocking from pinned memory)."""
        if law != self.law:
            raise ValueError(f'the batch masks were drawn with {law} but model.data_preprocessor '
                             f'says {self.law}; give train_dataloader.collate_fn the data '
                             "preprocessor's mask arguments")
        return self.cast_data(masks)

    def forward(self, data: dict, training: bool = False) -> dict:
        data = dict(data)
        batch_masks, law = data.pop('masks', None), data.pop('mask_law', None)
        data = super().forward(data, training)
        data_samples = data['data_samples']
        if not training or data_samples is None:
            return data
        if batch_masks is not None:
            masks = self.batch_masks(batch_masks, law)
        else:
            inputs = data['inputs']
            masks = self.global_view_masks(inputs if isinstance(inputs, (list, tuple))
                                           else [inputs])
        if len(data_samples) != masks.shape[0]:
            raise ValueError(f'{len(data_samples)} data samples for a batch of '
                             f'{masks.shape[0]} images')
        for sample, sample_masks in zip(data_samples, masks):
            if hasattr(sample, 'set_mask'):
                sample.set_mask(sample_masks)
            else:
                sample.set_field(sample_masks, 'mask', dtype=torch.Tensor)
        return data
