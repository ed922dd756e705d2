"""SelfSupDataPreprocessor that also draws the iBOT / DINOv2 masks of the global views.

Masks are drawn in the model process (not in dataloader workers) from
``np.random.default_rng([seed, iter, rank])``, so they depend only on the global training
iteration and the rank: a resumed run redraws exactly the masks of the original one, and
the number of dataloader workers does not matter.
"""
from typing import Optional, Sequence

import numpy as np
import torch
from mmengine.dist import get_rank
from mmpretrain.models.utils.data_preprocessor import SelfSupDataPreprocessor
from mmpretrain.registry import MODELS

from .masking import MASK_MODES, check_mask_cfg, generate_masks


@MODELS.register_module()
class MaskedSelfSupDataPreprocessor(SelfSupDataPreprocessor):
    """Normalise every view (as the parent) and attach block masks of the global views.

    In training, each data sample gets a field ``mask``: a bool tensor
    ``(num_global_views, h, w)``, ``h = H // patch_size`` of the global views, where entry
    ``g`` is the mask of view ``g`` of that image. Nothing is attached in eval mode
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
        seed (int): seed of the mask generator. Defaults to 0.
        **kwargs: ``SelfSupDataPreprocessor`` arguments (mean, std, to_rgb, ...).
    """

    def __init__(self,
                 patch_size: int = 16,
                 num_global_views: int = 2,
                 mask_mode: str = 'ibot',
                 mask_cfg: Optional[dict] = None,
                 mask_start_epoch: int = 0,
                 seed: int = 0,
                 **kwargs):
        super().__init__(**kwargs)
        if not isinstance(patch_size, int) or patch_size <= 0:
            raise ValueError(f'patch_size must be a positive int, got {patch_size!r}')
        if not isinstance(num_global_views, int) or num_global_views <= 0:
            raise ValueError(f'num_global_views must be a positive int, got {num_global_views!r}')
        if mask_mode not in MASK_MODES:
            raise ValueError(f'mask_mode must be one of {MASK_MODES}, got {mask_mode!r}')
        self.mask_cfg = dict(mask_cfg or {})
        check_mask_cfg(mask_mode, self.mask_cfg)
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
        """Masks of the first ``num_global_views`` views, (B, num_global_views, h, w) bool."""
        if len(views) < self.num_global_views:
            raise ValueError(f'num_global_views={self.num_global_views} but the batch has '
                             f'{len(views)} view(s)')
        global_views = views[:self.num_global_views]
        sizes = {tuple(v.shape[-2:]) for v in global_views}
        if len(sizes) != 1:
            raise ValueError(f'the {self.num_global_views} global views must share one size, '
                             f'got {sorted(sizes)}')
        height, width = sizes.pop()
        grid = (height // self.patch_size, width // self.patch_size)
        if min(grid) == 0:
            raise ValueError(f'global views of {height}x{width} px are smaller than '
                             f'patch_size={self.patch_size}')
        batch = global_views[0].shape[0]
        num_crops = self.num_global_views * batch
        if self.epoch < self.mask_start_epoch:
            masks = np.zeros((num_crops, *grid), dtype=bool)
        else:
            masks = generate_masks(num_crops, grid, self.mask_mode, self.mask_rng(),
                                   **self.mask_cfg)
        # Crops are ordered view-major, as DINOv2 collates them: (G, B, h, w) -> (B, G, h, w).
        masks = masks.reshape(self.num_global_views, batch, *grid).transpose(1, 0, 2, 3)
        return torch.from_numpy(np.ascontiguousarray(masks)).to(global_views[0].device)

    def forward(self, data: dict, training: bool = False) -> dict:
        data = super().forward(data, training)
        data_samples = data['data_samples']
        if not training or data_samples is None:
            return data
        inputs = data['inputs']
        views = inputs if isinstance(inputs, (list, tuple)) else [inputs]
        masks = self.global_view_masks(views)
        if len(data_samples) != masks.shape[0]:
            raise ValueError(f'{len(data_samples)} data samples for a batch of '
                             f'{masks.shape[0]} images')
        for sample, sample_masks in zip(data_samples, masks):
            if hasattr(sample, 'set_mask'):
                sample.set_mask(sample_masks)
            else:
                sample.set_field(sample_masks, 'mask', dtype=torch.Tensor)
        return data
