"""Counts the samples ``SeededDataset(skip_bad_samples=True)`` replaced, logs them once per
epoch and stops training past ``max_bad_fraction`` of the dataset.

The dataset marks each replacement in its data sample's metainfo; the marks travel with the
batch from the data-loader workers, so the count is the whole loader's, in the main process.
In a distributed run each rank sees its own share of the data: the ranks add their counts up
(one all-reduce at every logging interval and epoch end, the same iterations on every rank)
and, past the limit, all raise the same ``UnreadableSamplesError``.
"""
import logging
from typing import Optional

from mmengine.hooks import Hook, LoggerHook
from mmengine.logging import print_log
from mmpretrain.registry import HOOKS

from ...models.utils.dist import is_distributed
from .all_ranks import gather, global_sum
from .divergence_guard import first_names


class UnreadableSamplesError(OSError):
    """More unreadable samples than ``max_bad_fraction`` of the dataset allows."""


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
        self.files = {}          # unreadable file -> error, over the run (this rank)
        self.reported = 0
        loggers = [h for h in runner.hooks if isinstance(h, LoggerHook)]
        self.interval = loggers[0].interval if loggers else 50

    @property
    def active(self) -> bool:
        return self.dataset is not None and bool(self.dataset.skip_bad_samples)

    def after_train_iter(self, runner, batch_idx: int, data_batch: Optional[dict] = None,
                         outputs=None) -> None:
        if not self.active:
            return
        for data_sample in (data_batch or {}).get('data_samples') or []:
            file = data_sample.metainfo.get('unreadable_sample')
            if file is None or file in self.files:
                continue
            self.files[file] = data_sample.metainfo.get('unreadable_error', '')
            if len(self.files) == 1:
                print_log(f'replacing unreadable samples by others (first: {self.files[file]}); '
                          'the count is logged at the end of each epoch', logger='current',
                          level=logging.WARNING)
        # rank-local counts are free to read; a distributed count is a collective, taken at
        # iterations every rank reaches alike
        if (not is_distributed() or self.every_n_train_iters(runner, self.interval)
                or self.end_of_epoch(runner.train_dataloader, batch_idx)):
            self.check()

    def check(self) -> None:
        """Raise on every rank once the ranks together replaced more than the limit."""
        limit = self.dataset.max_bad_fraction * len(self.dataset)
        # the sum over ranks bounds the number of distinct files from above; only past the
        # limit are the names gathered (a file met on two ranks in two epochs counts once)
        if global_sum(len(self.files)) <= limit:
            return
        files = {}
        for rank_files in gather(self.files):
            for name, error in rank_files.items():
                files.setdefault(name, error)
        if len(files) > limit:
            raise UnreadableSamplesError(
                f'{len(files)} of {len(self.dataset)} samples are unreadable, more than '
                f'train_dataloader.dataset.max_bad_fraction={self.dataset.max_bad_fraction} '
                f'(first: {next(iter(files.values()))}); fix or remove those files, or raise '
                'max_bad_fraction')

    def after_train_epoch(self, runner) -> None:
        if self.active and len(self.files) > self.reported:
            names = list(self.files)
            print_log(f'{len(names)} unreadable samples replaced so far ({first_names(names)})',
                      logger='current', level=logging.WARNING)
            self.reported = len(names)

