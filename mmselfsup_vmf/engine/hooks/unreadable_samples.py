"""Counts the samples ``SeededDataset(skip_bad_samples=True)`` replaced, logs them once per
epoch and stops training past ``max_bad_fraction`` of the dataset.

The dataset marks each replacement in its data sample's metainfo; the marks travel with the
batch from the data-loader workers, so the count is the whole loader's, in the main process.
"""
import logging
from typing import Optional

from mmengine.hooks import Hook
from mmengine.logging import print_log
from mmpretrain.registry import HOOKS

from .divergence_guard import first_names


def seeded_dataset(dataset):
    """The first dataset with ``skip_bad_samples`` in a chain of ``.dataset`` wrappers."""
    while dataset is not None and not hasattr(dataset, 'skip_bad_samples'):
        dataset = getattr(dataset, 'dataset', None)
    return dataset


@HOOKS.register_module()
class UnreadableSampleHook(Hook):
    priority = 'NORMAL'

    def before_train(self, runner) -> None:
        self.dataset = seeded_dataset(getattr(runner.train_dataloader, 'dataset', None))
        self.files = {}          # unreadable file -> error, over the run
        self.reported = 0

    def after_train_iter(self, runner, batch_idx: int, data_batch: Optional[dict] = None,
                         outputs=None) -> None:
        if self.dataset is None or not self.dataset.skip_bad_samples or not data_batch:
            return
        for data_sample in data_batch.get('data_samples') or []:
            file = data_sample.metainfo.get('unreadable_sample')
            if file is None or file in self.files:
                continue
            self.files[file] = data_sample.metainfo.get('unreadable_error', '')
            if len(self.files) == 1:
                print_log(f'replacing unreadable samples by others (first: {self.files[file]}); '
                          'the count is logged at the end of each epoch', logger='current',
                          level=logging.WARNING)
        limit = self.dataset.max_bad_fraction * len(self.dataset)
        if len(self.files) > limit:
            raise OSError(
                f'{len(self.files)} of {len(self.dataset)} samples are unreadable, more than '
                f'train_dataloader.dataset.max_bad_fraction={self.dataset.max_bad_fraction} '
                f'(first: {next(iter(self.files.values()))})')

    def after_train_epoch(self, runner) -> None:
        if self.dataset is not None and len(self.files) > self.reported:
            names = list(self.files)
            print_log(f'{len(names)} unreadable samples replaced so far ({first_names(names)})',
                      logger='current', level=logging.WARNING)
            self.reported = len(names)
