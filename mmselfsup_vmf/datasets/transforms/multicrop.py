"""DINO's multi-crop augmentation as mmpretrain's ``MultiView`` with per-view pipelines."""
from typing import List, Sequence, Tuple

from mmpretrain.datasets.transforms import MultiView
from mmpretrain.registry import TRANSFORMS

BLURS = ('pil', 'kernel9')


def blur_transform(blur: str, prob: float) -> dict:
    """The Gaussian blur of one view, applied with probability ``prob``.

    * ``'pil'`` (DINO, iBOT, SimDINO): PIL's ``GaussianBlur(radius)``, radius ~ U[0.1, 2]
      (facebookresearch/dino ``utils.GaussianBlur``), as mmpretrain's ``GaussianBlur``
      with ``magnitude_std='inf'``.
    * ``'kernel9'`` (DINOv2, SimDINOv2): torchvision's ``GaussianBlur(kernel_size=9,
      sigma ~ U[0.1, 2])`` (facebookresearch/dinov2 ``data/transforms.py``), through
      mmpretrain's ``torchvision/`` wrapper. Note that DINOv2's own wrapper applies it with
      probability ``1 - p`` (see ``docs/methods.md#simdinov2-augmentations``).
    """
    if blur == 'pil':
        return dict(type='GaussianBlur', magnitude_range=(0.1, 2.0), magnitude_std='inf',
                    prob=prob)
    if blur == 'kernel9':
        return dict(type='RandomApply', prob=prob, transforms=[
            dict(type='NumpyToPIL', to_rgb=False),
            dict(type='torchvision/GaussianBlur', kernel_size=9, sigma=(0.1, 2.0)),
            dict(type='PILToNumpy', to_bgr=False)])
    raise ValueError(f'MultiCrop blur must be one of {BLURS}, got {blur!r}')


def dino_view_pipeline(size: int, scale: Tuple[float, float], blur_prob: float,
                       solarize_prob: float = 0.0, interpolation: str = 'bicubic',
                       color_jitter: Sequence[float] = (0.4, 0.4, 0.2, 0.1),
                       color_jitter_prob: float = 0.8, grayscale_prob: float = 0.2,
                       flip_prob: float = 0.5, blur: str = 'pil') -> List[dict]:
    """One DINO view as mmpretrain transform configs (crop, flip, colour, blur, solarize)."""
    brightness, contrast, saturation, hue = color_jitter
    return [
        dict(type='RandomResizedCrop', scale=size, crop_ratio_range=tuple(scale),
             backend='pillow', interpolation=interpolation),
        dict(type='RandomFlip', prob=flip_prob),
        dict(type='RandomApply', prob=color_jitter_prob, transforms=[
            dict(type='ColorJitter', brightness=brightness, contrast=contrast,
                 saturation=saturation, hue=hue)]),
        dict(type='RandomGrayscale', prob=grayscale_prob, keep_channels=True,
             channel_weights=(0.114, 0.587, 0.2989)),
        blur_transform(blur, blur_prob),
        dict(type='Solarize', thr=128, prob=solarize_prob),
    ]


@TRANSFORMS.register_module()
class MultiCrop(MultiView):
    """``num_global`` global crops + ``num_local`` local crops (DINO/iBOT/SimDINO).

    Global view 1 has blur p=``global_blur_probs[0]`` (1.0); the others have
    ``global_blur_probs[1]`` (0.1) and solarize p=``solarize_prob`` (0.2); local crops have
    blur p=``local_blur_prob`` (0.5). The output ``img`` is the list of views, globals first.
    ``blur='kernel9'`` selects DINOv2's blur (:func:`blur_transform`); other keyword
    arguments go to :func:`dino_view_pipeline`.
    """

    def __init__(self,
                 num_global: int = 2,
                 num_local: int = 10,
                 global_size: int = 224,
                 local_size: int = 96,
                 global_scale: Tuple[float, float] = (0.4, 1.0),
                 local_scale: Tuple[float, float] = (0.05, 0.4),
                 global_blur_probs: Tuple[float, float] = (1.0, 0.1),
                 local_blur_prob: float = 0.5,
                 solarize_prob: float = 0.2,
                 interpolation: str = 'bicubic',
                 **view_kwargs):
        if num_global < 1:
            raise ValueError(f'MultiCrop needs num_global >= 1 global crops (the teacher '
                             f'only sees global crops), got num_global={num_global}')
        if num_local < 0:
            raise ValueError(f'MultiCrop num_local must be >= 0, got {num_local}')
        for name, sc in (('global_scale', global_scale), ('local_scale', local_scale)):
            if not (len(sc) == 2 and 0 < sc[0] <= sc[1] <= 1):
                raise ValueError(f'MultiCrop {name} must be (min, max) with 0 < min <= max '
                                 f'<= 1, got {sc}')
        first = dino_view_pipeline(global_size, global_scale, global_blur_probs[0],
                                   interpolation=interpolation, **view_kwargs)
        second = dino_view_pipeline(global_size, global_scale, global_blur_probs[1],
                                    solarize_prob, interpolation=interpolation, **view_kwargs)
        local = dino_view_pipeline(local_size, local_scale, local_blur_prob,
                                   interpolation=interpolation, **view_kwargs)
        transforms, num_views = [first], [1]
        if num_global > 1:
            transforms.append(second)
            num_views.append(num_global - 1)
        if num_local > 0:
            transforms.append(local)
            num_views.append(num_local)
        super().__init__(transforms=transforms, num_views=num_views)
        self.num_global, self.num_local = num_global, num_local
