"""DINO's multi-crop on the data preprocessor's device, batched, with no host read.

The loader decodes, resizes and draws every view's random parameters
(``DeviceMultiCropInput`` with :mod:`.multicrop_params`, from the sample's ``aug_seed``,
drawn under ``SeededDataset``, hence a function of (seed, epoch, sample index)) and its
collate function packs them into one tensor, pinned with the batch; here every view is
cropped and flipped by one batched resampling, then colour-jittered, greyed, blurred and
solarised on the whole batch, each gate choosing per image with ``torch.where``
(:mod:`.multicrop_ops`): the step never waits for the device, runs are reproducible and
resume exactly, whatever the batch composition or number of workers. Where kornia's
operations differ from DINO's PIL ones is listed in
``docs/methods.md#multi-crop-on-the-device``.
"""
from typing import Dict, List, Sequence, Tuple

import numpy as np
import torch
from mmpretrain.models.utils.data_preprocessor import SelfSupDataPreprocessor
from mmpretrain.registry import MODELS

from . import multicrop_ops as ops
from .mask_preprocessor import MaskedSelfSupDataPreprocessor
from .multicrop_params import (
    PARAM_WIDTH,
    draw_sample_params,
    multicrop_laws,
    pack_params,
    unpack_params,
)

BLUR_KERNELS = dict(pil=13, kernel9=9)  # 'pil': +-3 sigma of the largest sigma (2.0)
INTERPOLATIONS = ('bilinear', 'bicubic')


@MODELS.register_module()
class MultiCropDataPreprocessor(SelfSupDataPreprocessor):
    """``SelfSupDataPreprocessor`` that makes DINO's multi-crop views on its device.

    In training, ``inputs`` must be the stacked ``(B, 3, S, S)`` uint8 images of the light
    loader pipeline (``DeviceMultiCropInput`` + ``PackInputs(meta_keys=('img_shape',
    'aug_seed', 'crop_params'))``, collated by ``multicrop_collate`` or ``masked_collate``,
    which add the packed ``crop_params`` tensor); the output ``inputs`` is the list of views,
    globals first, each ``(B, 3, size, size)`` and normalised as by the parent. In eval mode
    it is the parent. The arguments mirror ``MultiCrop`` (same defaults, same distributions).

    Args:
        interpolation: ``'bicubic'`` or ``'bilinear'`` resampling of the crops.
        blur: ``'pil'`` (DINO: sigma ~ U[0.1, 2], 13-tap kernel) or ``'kernel9'`` (DINOv2).
        color_jitter, color_jitter_prob, grayscale_prob, flip_prob: as ``MultiCrop``.
        non_blocking: copy the batch to the device without waiting (pinned memory).
        **kwargs: ``SelfSupDataPreprocessor`` arguments (mean, std, to_rgb).
    """

    def __init__(self, num_global: int = 2, num_local: int = 10, global_size: int = 224,
                 local_size: int = 96, global_scale: Tuple[float, float] = (0.4, 1.0),
                 local_scale: Tuple[float, float] = (0.05, 0.4),
                 global_blur_probs: Tuple[float, float] = (1.0, 0.1),
                 local_blur_prob: float = 0.5, solarize_prob: float = 0.2,
                 interpolation: str = 'bicubic', blur: str = 'pil',
                 color_jitter: Sequence[float] = (0.4, 0.4, 0.2, 0.1),
                 color_jitter_prob: float = 0.8, grayscale_prob: float = 0.2,
                 flip_prob: float = 0.5, non_blocking: bool = True, **kwargs):
        super().__init__(non_blocking=non_blocking, **kwargs)
        try:
            import kornia  # noqa: F401  (colour space and blur kernels)
        except ImportError as exc:
            raise ImportError('MultiCropDataPreprocessor needs kornia: pip install '
                              '"mmselfsup_vmf[device-aug]" (kornia>=0.9)') from exc
        if blur not in BLUR_KERNELS:
            raise ValueError(f'MultiCropDataPreprocessor blur must be one of '
                             f'{tuple(BLUR_KERNELS)}, got {blur!r}')
        if interpolation not in INTERPOLATIONS:
            raise ValueError(f'MultiCropDataPreprocessor interpolation must be one of '
                             f'{INTERPOLATIONS}, got {interpolation!r}')
        self.view_laws, self.draw_kwargs = multicrop_laws(
            num_global, num_local, global_size, local_size, global_scale, local_scale,
            global_blur_probs, local_blur_prob, solarize_prob, color_jitter,
            color_jitter_prob, grayscale_prob, flip_prob)
        self.interpolation = interpolation
        self.blur_kernel = BLUR_KERNELS[blur]
        # operations whose probability or strength is zero are left out (a static choice:
        # it does not look at the drawn gates)
        self.jitter_on = color_jitter_prob > 0 and any(c > 0 for c in color_jitter)
        self.hue_on = color_jitter[3] > 0
        self.grayscale_on = grayscale_prob > 0

    def draw_params(self, data_samples, height: int, width: int) -> Dict[str, np.ndarray]:
        """Every view's parameters, arrays of shape (B, V, ...): the ``crop_params`` that
        ``DeviceMultiCropInput`` drew in the loader, stacked, or (samples without them)
        drawn here from each sample's ``aug_seed`` and ``img_shape``."""
        params = []
        for i, sample in enumerate(data_samples):
            drawn = sample.metainfo.get('crop_params')
            if drawn is not None:
                params.append(drawn)
                continue
            seed = sample.metainfo.get('aug_seed')
            if seed is None:
                raise ValueError(f'data_samples[{i}] has no crop_params nor aug_seed: the '
                                 'loader pipeline must end with DeviceMultiCropInput and '
                                 "PackInputs(meta_keys=('img_shape', 'aug_seed', "
                                 "'crop_params'))")
            h, w = sample.metainfo.get('img_shape', (height, width))
            params.append(draw_sample_params(int(seed), int(h), int(w), self.view_laws,
                                             **self.draw_kwargs))
        stacked = {key: np.stack([p[key] for p in params]) for key in params[0]}
        if stacked['box'].shape[1] != len(self.view_laws):
            raise ValueError(f"the loader drew parameters of {stacked['box'].shape[1]} views, "
                             f'the data preprocessor makes {len(self.view_laws)}: give '
                             'DeviceMultiCropInput the MultiCrop arguments of the data '
                             'preprocessor')
        return stacked

    def forward(self, data: dict, training: bool = False) -> dict:
        if not training:  # the parent takes (inputs, data_samples) only
            return super().forward({k: v for k, v in data.items() if k != 'crop_params'},
                                   training)
        data = self.cast_data(data)  # the loader's crop_params too, non-blocking
        images, data_samples = data['inputs'], data.get('data_samples')
        if not (isinstance(images, torch.Tensor) and images.dim() == 4
                and images.shape[1] == 3):
            shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images)
            raise ValueError('MultiCropDataPreprocessor expects inputs of shape (B, 3, H, W) '
                             f'from DeviceMultiCropInput + PackInputs, got {shape}')
        if data_samples is None or len(data_samples) != images.shape[0]:
            raise ValueError('MultiCropDataPreprocessor needs one data sample (with aug_seed) '
                             'per image')
        x = images.float() / 255
        if self._channel_conversion:
            x = x.flip(1)  # BGR <-> RGB (a list index would copy it from the host)
        params = data.get('crop_params')
        if params is None:  # a batch made by hand: stacked here, copied once
            params = torch.from_numpy(pack_params(
                self.draw_params(data_samples, *x.shape[-2:]))).to(x.device)
        if tuple(params.shape) != (x.shape[0], len(self.view_laws), PARAM_WIDTH):
            raise ValueError(f'crop_params of shape {tuple(params.shape)}, expected '
                             f'{(x.shape[0], len(self.view_laws), PARAM_WIDTH)}: give '
                             'DeviceMultiCropInput the MultiCrop arguments of the data '
                             'preprocessor')
        views = self.make_views(x, params)
        if self._enable_normalize:
            views = [(v * 255 - self.mean) / self.std for v in views]
        else:
            views = [v * 255 for v in views]
        return {'inputs': views, 'data_samples': data_samples}

    def size_groups(self):
        """Runs of consecutive views of one output size: (first, stop, size)."""
        runs = []
        for v, law in enumerate(self.view_laws):
            if runs and runs[-1][2] == law.size:
                runs[-1][1] = v + 1
            else:
                runs.append([v, v + 1, law.size])
        return runs

    def make_views(self, x: torch.Tensor, params: torch.Tensor) -> List[torch.Tensor]:
        """One batched crop per view, then the intensity operations on each size group at
        once; ``params`` (B, V, PARAM_WIDTH) on the device."""
        batch = x.shape[0]
        p = unpack_params(params)
        views = []
        table = ops.row_table(x)  # shared by every view's crop
        for first, stop, size in self.size_groups():
            crops = [ops.crop_resize(x, p['box'][:, v], p['flip'][:, v, 0], size,
                                     self.interpolation, table).clamp_(0, 1)
                     for v in range(first, stop)]
            # view-major (V_group * B, ...), the order of torch.cat(crops)
            flat = unpack_params(params[:, first:stop].transpose(0, 1).reshape(
                (stop - first) * batch, PARAM_WIDTH))
            laws = self.view_laws[first:stop]
            out = self.intensity_ops(torch.cat(crops), flat, laws)
            views.extend(out.split(batch))
        return views

    def intensity_ops(self, y: torch.Tensor, p: Dict[str, torch.Tensor],
                      laws) -> torch.Tensor:
        """Colour jitter (per-crop random order), grayscale, blur, solarise: each on the
        whole group, its gate selecting the result (the flip was part of the crop)."""
        if self.jitter_on:
            y = ops.color_jitter(y, p['jitter'][:, 0], p['jitter_factors'],
                                 p['jitter_order'], self.hue_on)
        if self.grayscale_on:
            y = ops.grayscale(y, p['grayscale'][:, 0])
        if any(law.blur_prob > 0 for law in laws):
            y = ops.gaussian_blur(y, p['blur'][:, 0], p['sigma'][:, 0], self.blur_kernel)
        if any(law.solarize_prob > 0 for law in laws):
            y = ops.solarize(y, p['solarize'][:, 0])
        return y
@MODELS.register_module()
class MaskedMultiCropDataPreprocessor(MaskedSelfSupDataPreprocessor, MultiCropDataPreprocessor):
    """``MultiCropDataPreprocessor`` + the iBOT / DINOv2 masks of the global views
    (``MaskedSelfSupDataPreprocessor``'s arguments and behaviour)."""
