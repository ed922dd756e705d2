"""The loader side of multi-crop on the device: one resize, padding, a per-sample seed and
every view's random parameters."""
import numpy as np
from mmcv.image import imresize
from mmcv.transforms import BaseTransform
from mmengine.config import ConfigDict
from mmpretrain.registry import TRANSFORMS

from ...models.utils.multicrop_params import LAW_ARGS, draw_sample_params, multicrop_laws


@TRANSFORMS.register_module()
class DeviceMultiCropInput(BaseTransform):
    """Fits the image into ``size x size`` (keeping its aspect ratio), pads it there and
    draws the seed of its device augmentations (``MultiCropDataPreprocessor``) and, given
    ``MultiCrop``'s arguments, the random parameters of every view from that seed.

    Sets ``img`` to a ``(size, size, 3)`` uint8 array with the resized image in its top-left
    corner and zeros elsewhere, ``img_shape`` to the resized ``(h, w)`` (the region the crops
    are drawn from) and ``aug_seed`` to an integer from numpy's global RNG, which
    ``SeededDataset`` seeds from (seed, epoch, sample index). The crops are then drawn from
    this ``size``-pixel image rather than the full-resolution one: pick ``size`` near the
    dataset's typical resolution (ImageNet: ~400 px) to keep the global crops sharp.

    With the laws, ``crop_params`` is set to the arrays of
    :func:`~mmselfsup_vmf.models.utils.multicrop_params.draw_sample_params` (one row per
    view); pack them with ``PackInputs(meta_keys=(..., 'crop_params'))`` and the data
    preprocessor only stacks them, instead of drawing them in the training process.

    Args:
        size (int): side of the square the image is fitted into and padded to.
        interpolation (str): mmcv interpolation when shrinking ('area' averages, so the one
            resize does not alias); enlarging always uses 'bicubic'.
        **laws: ``MultiCrop``'s random-law arguments (``num_global``, ``num_local``, sizes,
            scales, probabilities, ``color_jitter``; see ``multicrop_laws``). None given:
            no ``crop_params``.
    """

    def __init__(self, size: int, interpolation: str = 'area', **laws):
        if not isinstance(size, int) or size <= 0:
            raise ValueError(f'DeviceMultiCropInput size must be a positive int, got {size!r}')
        unknown = set(laws) - set(LAW_ARGS)
        if unknown:
            raise TypeError(f'DeviceMultiCropInput got unknown argument(s) {sorted(unknown)}; '
                            f'the laws take {LAW_ARGS}')
        self.size = size
        self.interpolation = interpolation
        self.laws = multicrop_laws(**laws) if laws else None

    def transform(self, results: dict) -> dict:
        img = results['img']
        if img.ndim == 2:
            img = np.repeat(img[..., None], 3, axis=2)
        if img.ndim != 3 or img.shape[2] != 3:
            raise ValueError(f'DeviceMultiCropInput expects an HxWx3 image, got shape '
                             f'{img.shape} ({results.get("img_path", "in-memory image")})')
        h, w = img.shape[:2]
        scale = self.size / max(h, w)
        new_h, new_w = max(1, round(h * scale)), max(1, round(w * scale))
        if (new_h, new_w) != (h, w):
            mode = self.interpolation if scale < 1 else 'bicubic'
            img = imresize(img, (new_w, new_h), interpolation=mode)
        padded = np.zeros((self.size, self.size, 3), dtype=np.uint8)
        padded[:new_h, :new_w] = img
        results['img'] = padded
        results['img_shape'] = (new_h, new_w)
        results['aug_seed'] = int(np.random.randint(0, 2**63 - 1, dtype=np.int64))
        if self.laws is not None:
            view_laws, draw_kwargs = self.laws
            results['crop_params'] = draw_sample_params(results['aug_seed'], new_h, new_w,
                                                        view_laws, **draw_kwargs)
        return results


# the data preprocessor of each method's CPU recipe -> the one that makes the crops on its
# device (the masks still come from the loader's masked_collate)
DEVICE_PREPROCESSORS = {'SelfSupDataPreprocessor': 'MultiCropDataPreprocessor',
                        'MaskedSelfSupDataPreprocessor': 'MaskedMultiCropDataPreprocessor'}
DEVICE_CROPS_VALUES = (True, 'cpu')


def find_multicrop(node, path='train_dataloader'):
    """(the pipeline list holding ``MultiCrop``, its config path) in a dataloader config,
    looking through dataset wrappers (``dataset=``)."""
    pipeline = node.get('pipeline') if isinstance(node, dict) else None
    if pipeline and any(t.get('type') == 'MultiCrop' for t in pipeline):
        return pipeline, f'{path}.pipeline'
    if isinstance(node, dict) and isinstance(node.get('dataset'), dict):
        return find_multicrop(node['dataset'], f'{path}.dataset')
    raise ValueError(f'device_crops: no MultiCrop transform in the pipeline of {path} '
                     '(the switch moves MultiCrop onto the data preprocessor)')


def use_device_crops(cfg, check_device: bool = True):
    """Moves a config's ``MultiCrop`` onto its data preprocessor's device, in place.

    The pipeline's ``MultiCrop(**kw)`` becomes ``DeviceMultiCropInput(size, **laws)``
    (``size`` = ``cfg.device_crops_size``, set by the dataset bases; ``laws`` the random-law
    arguments of ``kw``, so the loader draws every view's parameters) and its ``PackInputs``
    also packs ``img_shape``, ``aug_seed`` and ``crop_params``; ``model.data_preprocessor``
    becomes ``MultiCropDataPreprocessor(**kw, ...)`` (``MaskedMultiCropDataPreprocessor`` for the
    masked methods), keeping its own arguments (mean, std, to_rgb, masks). Same laws, same
    arguments: only where the crops are made changes. A ``masked_collate`` keeps drawing the
    masks in the loader, told the global crops' size.

    ``cfg.device_crops``: ``True`` requires an accelerator (the crops would otherwise run in
    the training process on the CPU, slower than in the loader workers); ``'cpu'`` allows
    the CPU (tests, debugging); unset or False counts as ``True`` here. ``check_device=False``
    skips that check.
    """
    mode = cfg.get('device_crops') or True  # called explicitly: the switch is on
    if mode not in DEVICE_CROPS_VALUES:
        raise ValueError(f'device_crops must be one of {DEVICE_CROPS_VALUES} (or False), got '
                         f'{mode!r}')
    try:
        import kornia  # noqa: F401
    except ImportError as exc:
        raise ImportError('device_crops needs kornia for the crops on the device: pip install '
                          '"mmselfsup_vmf[device-aug]" (or drop device_crops to keep the CPU '
                          'MultiCrop)') from exc
    if check_device and mode is True:
        from mmengine.device import get_device
        if get_device() == 'cpu':
            raise RuntimeError("device_crops=True needs a GPU (or another accelerator), found "
                               "none; set device_crops='cpu' to make the crops on the CPU in "
                               'the training process, or drop device_crops')
    size = cfg.get('device_crops_size')
    if not isinstance(size, int) or size <= 0:
        raise ValueError('device_crops needs device_crops_size (the side the loader fits each '
                         f'image into, e.g. 384 for ImageNet) as a positive int, got {size!r}')
    pipeline, where = find_multicrop(cfg.train_dataloader)
    at = next(i for i, t in enumerate(pipeline) if t.get('type') == 'MultiCrop')
    rest = pipeline[at + 1:]
    if [t.get('type') for t in rest] != ['PackInputs']:
        raise ValueError(f'device_crops: {where} must end with MultiCrop, PackInputs; got '
                         f'{[t.get("type") for t in pipeline]}')
    crop = {k: v for k, v in pipeline[at].items() if k not in ('type', 'channel_order')}
    pack = dict(rest[0])
    keys = tuple(pack.get('meta_keys', ()))
    pack['meta_keys'] = keys + tuple(k for k in ('img_shape', 'aug_seed', 'crop_params')
                                     if k not in keys)
    laws = {k: v for k, v in crop.items() if k in LAW_ARGS}
    pipeline[at:] = [ConfigDict(type='DeviceMultiCropInput', size=size, **laws),
                     ConfigDict(pack)]
    pre = cfg.model.data_preprocessor
    if pre.get('type') not in DEVICE_PREPROCESSORS:
        raise ValueError(f'device_crops: model.data_preprocessor type {pre.get("type")!r} has '
                         f'no device counterpart (known: {tuple(DEVICE_PREPROCESSORS)})')
    pre.update(crop, type=DEVICE_PREPROCESSORS[pre['type']])
    collate = cfg.train_dataloader.get('collate_fn')
    if isinstance(collate, dict) and collate.get('type') == 'masked_collate':
        # the loader now sees whole images: the masks' grid comes from the crop size
        collate['global_size'] = crop.get('global_size', 224)
    elif collate is None or (isinstance(collate, dict)
                             and collate.get('type') in ('default_collate', 'pseudo_collate')):
        # stacks the views' parameters into one tensor the loader pins
        cfg.train_dataloader.collate_fn = ConfigDict(type='multicrop_collate')
    cfg.device_crops = mode  # the dumped config says the switch was applied
    return cfg


def apply_device_crops_key(cfg):
    """``use_device_crops(cfg)`` when ``cfg.device_crops`` is set (what the tools call after
    merging ``--cfg-options``)."""
    if cfg.get('device_crops'):
        use_device_crops(cfg)
    return cfg
