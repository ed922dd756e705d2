"""Augmentation randomness that depends on (seed, epoch, sample index) only.

mmengine seeds each dataloader worker once (with no epoch in the seed) and restores no RNG
on resume, so crops would repeat across epochs with re-created workers and differ between a
straight and a resumed run. ``EpochIndexSampler`` yields ``(index, epoch, seed)`` keys and
``SeededDataset`` runs the wrapped pipeline under RNGs seeded from that key, restoring the
process RNGs afterwards, whatever the number of workers.
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


@DATASETS.register_module()
class SeededDataset:
    """Wraps a dataset; ``ds[(index, epoch, seed)]`` is reproducible, ``ds[index]`` passes through."""

    def __init__(self, dataset):
        self.dataset = DATASETS.build(dataset) if isinstance(dataset, dict) else dataset

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
                random.seed(s)
                np.random.seed(s)
                torch.manual_seed(s)
                return self.dataset[index]
        finally:
            random.setstate(py_state)
            np.random.set_state(np_state)
