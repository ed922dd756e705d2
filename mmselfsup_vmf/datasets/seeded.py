"""Augmentation randomness that depends on (seed, epoch, sample index) only.

mmengine seeds each dataloader worker once (with no epoch in the seed) and restores no RNG
on resume, so crops would repeat across epochs with re-created workers and differ between a
straight and a resumed run. ``EpochIndexSampler`` yields ``(index, epoch, seed)`` keys and
``SeededDataset`` runs the wrapped pipeline under RNGs seeded from that key, restoring the
process RNGs afterwards, whatever the number of workers. The key is recorded in the data
sample's metainfo (``sample_key``), from which ``masked_collate`` seeds a batch's masks.
"""
import itertools
import random
from typing import Iterator, Tuple

import numpy as np
import torch
from mmengine.dataset import DefaultSampler
from mmpretrain.registry import DATA_SAMPLERS, DATASETS


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """A 32-bit seed mixed from (seed, epoch, index) by numpy's SeedSequence."""
    return int(np.random.SeedSequence([seed % 2**32, epoch, index]).generate_state(1)[0])


@DATA_SAMPLERS.register_module()
class EpochIndexSampler(DefaultSampler):
    """mmengine's DefaultSampler (same order, same sharding) yielding (index, epoch, seed).

    ``skip_once(n)`` drops the first ``n`` indices of the next pass only: resuming a
    checkpoint saved in the middle of an epoch (``StopOnSignalHook``) continues that epoch's
    order where it stopped.
    """

    _skip = 0

    def skip_once(self, num_indices: int) -> None:
        self._skip = int(num_indices)

    def __iter__(self) -> Iterator[Tuple[int, int, int]]:
        skip, self._skip = self._skip, 0
        for index in itertools.islice(super().__iter__(), skip, None):
            yield (int(index), self.epoch, self.seed)


# what image loaders raise for a missing, truncated or undecodable file (mmcv asserts)
UNREADABLE = (OSError, AssertionError)


def replacement_index(seed: int, epoch: int, index: int, attempt: int, size: int) -> int:
    """The sample read instead of an unreadable ``index``: another index, a function of
    (seed, epoch, index, attempt) only, so a resumed run reads the same replacement."""
    if size < 2:
        raise ValueError('cannot replace an unreadable sample in a dataset of one sample')
    offset = 1 + sample_seed(seed, epoch, index * 1009 + attempt) % (size - 1)
    return (index + offset) % size


@DATASETS.register_module()
class SeededDataset:
    """Wraps a dataset; ``ds[(index, epoch, seed)]`` is reproducible, ``ds[index]`` passes through.

    Args:
        dataset: the wrapped dataset (or its config).
        skip_bad_samples: replace a sample whose file cannot be read (``OSError`` or
            mmcv's failed-load assertion) by another one (:func:`replacement_index`, drawn
            with the same augmentation seed) and mark it in its data sample's metainfo
            (``unreadable_sample``) for ``UnreadableSampleHook`` to count and log. Default
            False: an unreadable file stops training with an error naming it.
        max_bad_fraction: with ``skip_bad_samples``, ``UnreadableSampleHook`` stops training
            once more than this fraction of the dataset's samples was unreadable.
        max_attempts: replacements tried for one sample before giving up.
    """

    def __init__(self, dataset, skip_bad_samples: bool = False, max_bad_fraction: float = 0.01,
                 max_attempts: int = 10):
        if not 0 <= max_bad_fraction <= 1:
            raise ValueError('train_dataloader.dataset.max_bad_fraction must be in [0, 1], '
                             f'got {max_bad_fraction!r}')
        self.dataset = DATASETS.build(dataset) if isinstance(dataset, dict) else dataset
        self.skip_bad_samples = skip_bad_samples
        self.max_bad_fraction = max_bad_fraction
        self.max_attempts = max_attempts

    @property
    def metainfo(self):
        return getattr(self.dataset, 'metainfo', {})

    def __len__(self) -> int:
        return len(self.dataset)

    def __getattr__(self, name):
        if name == 'dataset':
            raise AttributeError(name)
        return getattr(self.dataset, name)

    def __getitem__(self, key):
        if not isinstance(key, tuple):
            return self.dataset[key]
        index, epoch, seed = key
        s = sample_seed(seed, epoch, index)
        py_state, np_state = random.getstate(), np.random.get_state()
        try:
            with torch.random.fork_rng(devices=[]):
                return self._read(index, epoch, seed, s)
        finally:
            random.setstate(py_state)
            np.random.set_state(np_state)

    def _read(self, index: int, epoch: int, seed: int, s: int):
        """The pipeline output of ``index`` under seed ``s``, or of its replacement."""
        first_error, tried = None, index
        for attempt in range(self.max_attempts + 1):
            random.seed(s)
            np.random.seed(s)
            torch.manual_seed(s)
            try:
                sample = self.dataset[tried]
            except UNREADABLE as exc:
                if not self.skip_bad_samples:
                    raise OSError(f'cannot read sample {index}: {exc} (set '
                                  'train_dataloader.dataset.skip_bad_samples=True to replace '
                                  'unreadable samples)') from exc
                first_error = first_error or (self.file_of(index), str(exc))
                tried = replacement_index(seed, epoch, index, attempt, len(self))
                continue
            if tried != index:
                self.mark_replaced(sample, index, first_error)
            self.add_metainfo(sample, dict(sample_key=(index, epoch, seed)))
            return sample
        raise OSError(f'cannot read sample {index} nor {self.max_attempts} replacements '
                      f'(first: {first_error[1]})')

    def file_of(self, index: int) -> str:
        """The file path of sample ``index`` if the wrapped dataset says it, else 'sample N'."""
        try:
            info = self.dataset.get_data_info(index)
        except Exception:  # not an mmengine BaseDataset
            return f'sample {index}'
        return str(info.get('img_path', f'sample {index}'))

    @staticmethod
    def add_metainfo(sample, info: dict) -> None:
        """Adds ``info`` to the sample's data sample, if it has one."""
        data_sample = sample.get('data_samples') if isinstance(sample, dict) else None
        if data_sample is not None and hasattr(data_sample, 'set_metainfo'):
            data_sample.set_metainfo(info)

    @classmethod
    def mark_replaced(cls, sample, index: int, error: Tuple[str, str]) -> None:
        cls.add_metainfo(sample, dict(unreadable_sample=error[0], unreadable_error=error[1],
                                      unreadable_index=index))
