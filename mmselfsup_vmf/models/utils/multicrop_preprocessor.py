"""DINO's multi-crop on the data preprocessor's device, batched with kornia's augmentations.

The loader decodes, resizes and draws every view's random parameters
(``DeviceMultiCropInput`` with :mod:`.multicrop_params`, from the sample's ``aug_seed``,
drawn under ``SeededDataset``, hence a function of (seed, epoch, sample index)); here every
view is cropped, flipped, colour-jittered, greyed, blurred and solarised by
``kornia.augmentation`` modules called with those parameters: runs are reproducible and
resume exactly, whatever the batch composition or number of workers. Where kornia's
operations differ from DINO's PIL ones is listed in
``docs/methods.md#multi-crop-on-the-device``.
"""
from typing import Dict, List, Sequence, Tuple

import numpy as np
import torch
from mmpretrain.models.utils.data_preprocessor import SelfSupDataPreprocessor
from mmpretrain.registry import MODELS

from .mask_preprocessor import MaskedSelfSupDataPreprocessor
from .multicrop_params import draw_sample_params, multicrop_laws

BLUR_KERNELS = dict(pil=13, kernel9=9)  # 'pil': +-3 sigma of the largest sigma (2.0)


def crop_corners(boxes: np.ndarray) -> torch.Tensor:
    """(N, 4) boxes (top, left, h, w) -> kornia's (N, 4, 2) inclusive (x, y) corners,
    clockwise from the top left."""
    t = torch.as_tensor(np.asarray(boxes, dtype=np.float32)).reshape(-1, 4)
    top, left, h, w = t.unbind(1)
    right, bottom = left + w - 1, top + h - 1
    return torch.stack([torch.stack([left, top], 1), torch.stack([right, top], 1),
                        torch.stack([right, bottom], 1), torch.stack([left, bottom], 1)], 1)


@MODELS.register_module()
class MultiCropDataPreprocessor(SelfSupDataPreprocessor):
    """``SelfSupDataPreprocessor`` that makes DINO's multi-crop views on its device.

    In training, ``inputs`` must be the stacked ``(B, 3, S, S)`` uint8 images of the light
    loader pipeline (``DeviceMultiCropInput`` + ``PackInputs(meta_keys=('img_shape',
    'aug_seed'))``); the output ``inputs`` is the list of views, globals first, each
    ``(B, 3, size, size)`` and normalised as by the parent. In eval mode it is the parent.
    The arguments mirror ``MultiCrop`` (same defaults, same distributions).

    Args:
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
            from kornia import augmentation as K
        except ImportError as exc:
            raise ImportError('MultiCropDataPreprocessor needs kornia: pip install '
                              '"mmselfsup_vmf[device-aug]" (kornia>=0.9)') from exc
        if blur not in BLUR_KERNELS:
            raise ValueError(f'MultiCropDataPreprocessor blur must be one of '
                             f'{tuple(BLUR_KERNELS)}, got {blur!r}')
        self.view_laws, self.draw_kwargs = multicrop_laws(
            num_global, num_local, global_size, local_size, global_scale, local_scale,
            global_blur_probs, local_blur_prob, solarize_prob, color_jitter,
            color_jitter_prob, grayscale_prob, flip_prob)
        self.crops = torch.nn.ModuleDict({
            str(size): K.RandomResizedCrop((size, size), resample=interpolation,
                                           align_corners=False, cropping_mode='slice')
            for size in {global_size, local_size}})
        self.flip = K.RandomHorizontalFlip()
        self.jitter = K.ColorJitter(*color_jitter)
        self.grayscale = K.RandomGrayscale()
        kernel = BLUR_KERNELS[blur]
        self.blur = K.RandomGaussianBlur((kernel, kernel), (0.1, 2.0), border_type='reflect')
        self.solarize = K.RandomSolarize(0.0, 0.0)

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
        if not training:
            return super().forward(data, training)
        data = self.cast_data(data)
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
            x = x[:, [2, 1, 0]]
        params = self.draw_params(data_samples, *x.shape[-2:])
        views = self.make_views(x, params)
        if self._enable_normalize:
            views = [(v * 255 - self.mean) / self.std for v in views]
        else:
            views = [v * 255 for v in views]
        return {'inputs': views, 'data_samples': data_samples}

    def make_views(self, x: torch.Tensor, params: Dict[str, np.ndarray]) -> List[torch.Tensor]:
        """Crops every view, then runs the intensity operations on each size group at once."""
        batch = x.shape[0]
        groups = {}  # output size -> (view indices, crops)
        for v, law in enumerate(self.view_laws):
            size = law.size
            crop = self.crops[str(size)](x, params=dict(
                src=crop_corners(params['box'][:, v]),
                dst=crop_corners(np.tile([0, 0, size, size], (batch, 1))),
                input_size=torch.tensor([list(x.shape[-2:])] * batch),
                output_size=torch.tensor([[size, size]] * batch),
                batch_prob=torch.ones(batch)))
            groups.setdefault(size, ([], []))
            groups[size][0].append(v)
            groups[size][1].append(crop.clamp_(0, 1))
        views = [None] * len(self.view_laws)
        for indices, crops in groups.values():
            # (B, V, ...) -> view-major (V_group * B, ...), the order of torch.cat(crops)
            flat = {k: np.swapaxes(a[:, indices], 0, 1).reshape(len(indices) * batch,
                                                                 *a.shape[2:])
                    for k, a in params.items()}
            out = self.intensity_ops(torch.cat(crops), flat)
            for k, v in enumerate(indices):
                views[v] = out[k * batch:(k + 1) * batch]
        return views

    def intensity_ops(self, y: torch.Tensor, flat: Dict[str, np.ndarray]) -> torch.Tensor:
        """Flip, colour jitter (per-crop random order), grayscale, blur, solarise."""
        def gate(key):
            return torch.as_tensor(flat[key], dtype=torch.float32).to(y.device)

        if flat['flip'].any():
            y = self.flip(y, params=dict(batch_prob=gate('flip')))
        factors = torch.as_tensor(flat['jitter_factors'], dtype=torch.float32)
        orders = torch.as_tensor(flat['jitter_order'])
        jitter = torch.as_tensor(flat['jitter'])
        # kornia draws one order per call; DINO's ColorJitter one per image: apply step k
        # of every crop's own order, one kornia call per (step, operation). The indices are
        # found on the host, where the parameters were drawn, so nothing waits for the device.
        for step in range(4):
            for op in range(4):
                idx = torch.nonzero(jitter & (orders[:, step] == op)).flatten()
                if idx.numel() == 0:
                    continue
                chosen = torch.tensor([1.0, 1.0, 1.0, 0.0]).repeat(idx.numel(), 1)
                chosen[:, op] = factors[idx, op]
                chosen = chosen.to(y.device)
                idx = idx.to(y.device)
                y[idx] = self.jitter(y[idx], params=dict(
                    brightness_factor=chosen[:, 0], contrast_factor=chosen[:, 1],
                    saturation_factor=chosen[:, 2], hue_factor=chosen[:, 3],
                    order=torch.tensor([op]), batch_prob=chosen.new_ones(idx.numel())))
        n = len(y)
        gated = (
            (self.grayscale, 'grayscale', {}),
            (self.blur, 'blur', dict(sigma=gate('sigma'))),
            (self.solarize, 'solarize', dict(thresholds=y.new_full((n,), 0.5),
                                             additions=y.new_zeros(n))))
        for module, key, extra in gated:
            # skipped when no crop is selected: kornia checks the blur kernel against the
            # image size even for unselected crops
            if flat[key].any():
                y = module(y, params=dict(extra, batch_prob=gate(key)))
        return y


@MODELS.register_module()
class MaskedMultiCropDataPreprocessor(MaskedSelfSupDataPreprocessor, MultiCropDataPreprocessor):
    """``MultiCropDataPreprocessor`` + the iBOT / DINOv2 masks of the global views
    (``MaskedSelfSupDataPreprocessor``'s arguments and behaviour)."""
