"""A collate function that draws the iBOT / DINOv2 masks of a batch in the loader worker.

``train_dataloader.collate_fn = dict(type='masked_collate', patch_size=..., mask_mode=...,
...)`` collates as mmengine's ``default_collate`` and adds ``masks``, a bool tensor
``(B, num_global_views, h, w)`` of the global views, drawn by
:func:`~mmselfsup_vmf.models.utils.masking.global_view_masks` (the law the data
preprocessor uses for hand-made batches), and ``mask_law``, the arguments it drew them
with. DINOv2 draws its masks in its collate function too (``collate_data_and_cast``), so
'stratified' counts all global crops of the rank's batch together, as there.

Seed: ``SeedSequence([seed, epoch, MASK_STREAM, *indices])``, where ``indices`` are the
batch's dataset indices in batch order and (index, epoch, seed) are the keys of
``EpochIndexSampler`` that ``SeededDataset`` records in each data sample's metainfo
(``sample_key``). So the masks are a function of the batch's samples only: they do not
depend on the number of workers or on which worker collates, a run resumed in the middle of
an epoch (the sampler skips the batches already seen) redraws the same ones, and ranks draw
different ones because they hold different indices. The rank itself is not part of the
seed: a forked worker knows it, a spawned one does not. ``MASK_STREAM`` keeps a batch of
one sample from reusing that sample's augmentation seed, ``(seed, epoch, index)``.
The epoch also switches the masks on at ``mask_start_epoch`` (iBOT's ``pred_start_epoch``).

With device crops, both collate functions here also stack the samples' ``crop_params``
(drawn by ``DeviceMultiCropInput``) into one float32 tensor ``(B, V, PARAM_WIDTH)``, so the
loader pins it and the data preprocessor copies it to the device once per batch.
"""
from typing import Optional, Sequence

import numpy as np
import torch
from mmengine.dataset import default_collate
from mmengine.registry import FUNCTIONS

from ..models.utils.masking import global_grid, global_view_masks, mask_law
from ..models.utils.multicrop_params import pack_params

MASK_STREAM = 0x6D61736B  # 'mask'


def batch_mask_rng(keys: Sequence[tuple]) -> np.random.Generator:
    """The generator of a batch whose samples have keys (index, epoch, seed)."""
    _, epoch, seed = keys[0]
    indices = [int(k[0]) for k in keys]
    return np.random.default_rng(
        np.random.SeedSequence([int(seed) % 2**32, int(epoch), MASK_STREAM, *indices]))


def sample_keys(data_samples) -> list:
    """Each data sample's ``sample_key`` (index, epoch, seed) from ``SeededDataset``."""
    keys = []
    for i, sample in enumerate(data_samples or ()):
        key = getattr(sample, 'metainfo', {}).get('sample_key')
        if key is None:
            raise ValueError(f'masked_collate: data_samples[{i}] has no sample_key; wrap '
                             "the dataset in dict(type='SeededDataset', ...) and use "
                             "sampler=dict(type='EpochIndexSampler'), as the dataset bases do")
        keys.append(tuple(key))
    if not keys:
        raise ValueError('masked_collate: the batch has no data_samples (the pipeline must '
                         'end with PackInputs)')
    return keys


def stack_crop_params(batch: dict) -> dict:
    """Adds ``crop_params``, the packed parameters of every sample's views, when the samples
    carry them (``DeviceMultiCropInput`` + ``PackInputs(meta_keys=(..., 'crop_params'))``)."""
    samples = batch.get('data_samples') or ()
    drawn = [getattr(s, 'metainfo', {}).get('crop_params') for s in samples]
    if drawn and all(d is not None for d in drawn):
        batch['crop_params'] = torch.from_numpy(np.stack([pack_params(d) for d in drawn]))
    return batch


@FUNCTIONS.register_module()
def multicrop_collate(data_batch: Sequence[dict]) -> dict:
    """``default_collate`` + the batch's packed ``crop_params`` (device crops without masks)."""
    return stack_crop_params(default_collate(data_batch))


@FUNCTIONS.register_module()
def masked_collate(data_batch: Sequence[dict], patch_size: int = 16,
                   num_global_views: int = 2, mask_mode: str = 'ibot',
                   mask_cfg: Optional[dict] = None, mask_start_epoch: int = 0,
                   global_size: Optional[int] = None) -> dict:
    """``default_collate`` + the batch's ``masks`` (bool) and ``mask_law`` (see the module
    docstring). The arguments are those of ``MaskedSelfSupDataPreprocessor``;
    ``global_size`` is the side of the global crops when the batch holds whole images
    (device crops), else it is read from the first view."""
    law = mask_law(patch_size, num_global_views, mask_mode, mask_cfg, mask_start_epoch)
    batch = default_collate(data_batch)
    keys = sample_keys(batch.get('data_samples'))
    inputs = batch['inputs']
    if global_size is not None:
        height = width = int(global_size)
    elif isinstance(inputs, (list, tuple)) and len(inputs) >= num_global_views:
        height, width = inputs[0].shape[-2:]
        if {tuple(v.shape[-2:]) for v in inputs[:num_global_views]} != {(height, width)}:
            raise ValueError(f'masked_collate: the {num_global_views} global views must '
                             'share one size, got '
                             f'{[tuple(v.shape[-2:]) for v in inputs[:num_global_views]]}')
    else:
        raise ValueError(f'masked_collate: num_global_views={num_global_views} but the '
                         'samples do not hold that many views; with whole images (device '
                         'crops) set collate_fn.global_size')
    grid = global_grid(height, width, patch_size)
    masked = int(keys[0][1]) >= law['mask_start_epoch']
    masks = global_view_masks(len(keys), grid, num_global_views, mask_mode,
                              batch_mask_rng(keys), masked, **law['mask_cfg'])
    batch['masks'] = torch.from_numpy(masks)
    batch['mask_law'] = law
    return stack_crop_params(batch)
