"""Masks drawn in the dataloader workers (``masked_collate``), through real DataLoaders and
Runners built from the masked methods' demo configs (on 48 scikit-learn digits):

* two workers give the masks of no worker, batch for batch;
* a Runner resumed from a checkpoint saved in the middle of an epoch (StopOnSignalHook's)
  is fed the masks of the uninterrupted run;
* the laws: 'stratified' masks exactly int(2 B p) of the 2 B global crops of every batch,
  'ibot' leaves about half of the crops unmasked (binomial bounds), and no crop is masked
  before ``mask_start_epoch``;
* the training process draws no mask (the mask law's entry point is never called there).
"""
import os.path as osp
import signal
import sys

import pytest
import torch
from mmengine.hooks import Hook
from mmengine.runner import Runner

from mmselfsup_vmf.engine.hooks.stop_on_signal import StopOnSignalHook
from mmselfsup_vmf.models.utils import masking

sys.path.insert(0, osp.join(osp.dirname(osp.dirname(osp.abspath(__file__))), 'integration'))
from tiny_dino_cfg import tiny_method_cfg  # noqa: E402

NUM_TRAIN, BATCH = 48, 16  # 3 batches per epoch


def loader(method, tmp_path, num_workers=0, **collate):
    cfg = tiny_method_cfg(method, tmp_path, num_train=NUM_TRAIN, batch=BATCH)
    cfg.train_dataloader.update(num_workers=num_workers, persistent_workers=False)
    cfg.train_dataloader.collate_fn.update(collate)
    return Runner.build_dataloader(cfg.train_dataloader, seed=0)


def epoch_batches(data_loader, epoch):
    data_loader.sampler.set_epoch(epoch)
    return list(data_loader)


def indices(batch):
    return [s.metainfo['sample_key'][0] for s in batch['data_samples']]


@pytest.mark.parametrize('method', ['ibot', 'simdinov2'])
def test_two_workers_draw_the_masks_of_none(method, tmp_path):
    for epoch in (0, 1):
        alone = epoch_batches(loader(method, tmp_path), epoch)
        workers = epoch_batches(loader(method, tmp_path, num_workers=2), epoch)
        assert len(alone) == len(workers) == NUM_TRAIN // BATCH
        for a, w in zip(alone, workers):
            assert indices(a) == indices(w)
            assert a['masks'].dtype == torch.bool and a['masks'].shape == (BATCH, 2, 4, 4)
            assert torch.equal(a['masks'], w['masks'])
            assert a['mask_law'] == w['mask_law']
    # another epoch or another seed draws other masks
    first = epoch_batches(loader(method, tmp_path), 0)[0]['masks']
    assert not torch.equal(first, epoch_batches(loader(method, tmp_path), 1)[0]['masks'])


def test_stratified_masks_half_of_the_global_crops_of_each_batch(tmp_path):
    data_loader = loader('simdinov2', tmp_path)
    counts = []
    for epoch in range(4):
        for batch in epoch_batches(data_loader, epoch):
            counts.append(int(batch['masks'].flatten(2).any(-1).sum()))  # of 2 B crops
            # each masked crop covers int(r N) patches, r in [0.1, 0.5), N = 16; a block
            # mask can fall short of its target, never above
            assert int(batch['masks'].flatten(2).sum(-1).max()) <= 8
    # int(2 B p) = 16 crops get a ratio; a target of 1 or 2 patches can find no block
    # (DINOv2's generator gives up after 10 tries too), so a few batches mask fewer
    assert max(counts) == 16 and sum(c == 16 for c in counts) >= len(counts) // 2, counts


def test_ibot_leaves_about_half_of_the_crops_unmasked_and_respects_the_start_epoch(tmp_path):
    data_loader = loader('ibot', tmp_path)
    crops = unmasked = 0
    for epoch in range(8):
        for batch in epoch_batches(data_loader, epoch):
            any_masked = batch['masks'].flatten(2).any(-1)
            crops += any_masked.numel()
            unmasked += int((~any_masked).sum())
    # pred_ratio 0 with probability 1/2, else r ~ U(0.1, 0.5): int(16 r) >= 1 patch, so
    # P(unmasked) = 1/2. 768 crops: 4.5 binomial standard deviations is +-0.081.
    assert abs(unmasked / crops - 0.5) < 0.081, unmasked / crops
    late = loader('ibot', tmp_path, mask_start_epoch=2)
    assert not any(b['masks'].any() for b in epoch_batches(late, 1))
    assert all(b['masks'].any() for b in epoch_batches(late, 2))


def test_a_batch_without_sample_keys_is_a_clear_error(tmp_path):
    from mmselfsup_vmf.datasets import masked_collate
    batch = next(iter(loader('ibot', tmp_path, num_workers=0)))
    samples = [dict(inputs=[v[i] for v in batch['inputs']], data_samples=s)
               for i, s in enumerate(batch['data_samples'])]
    for s in samples:
        del s['data_samples'].sample_key
    with pytest.raises(ValueError, match="no sample_key; wrap the dataset in dict"):
        masked_collate(samples, patch_size=7)


class _Record(Hook):
    def __init__(self):
        self.masks = {}

    def before_train_iter(self, runner, batch_idx, data_batch=None):
        self.masks[runner.iter] = data_batch['masks'].clone()


class _SignalAt(Hook):
    """What SIGTERM does, without a signal: StopOnSignalHook's flag after iteration ``at``."""
    priority = 'VERY_HIGH'

    def __init__(self, at):
        self.at = at

    def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None):
        if runner.iter + 1 == self.at:
            hook = next(h for h in runner.hooks if isinstance(h, StopOnSignalHook))
            hook._received = signal.SIGTERM


def run(work_dir, *hooks, resume_from=None):
    cfg = tiny_method_cfg('simdinov2', work_dir, num_train=NUM_TRAIN, batch=BATCH)
    cfg.train_cfg.max_epochs = 2
    if resume_from is not None:
        cfg.resume, cfg.load_from = True, resume_from
    runner = Runner.from_cfg(cfg)
    for hook in hooks:
        runner.register_hook(hook)
    runner.train()


def test_resume_in_the_middle_of_an_epoch_redraws_the_same_masks(tmp_path):
    straight = _Record()
    run(tmp_path / 'straight', straight)
    assert sorted(straight.masks) == list(range(6))
    with pytest.raises(SystemExit):
        run(tmp_path / 'stopped', _SignalAt(4))  # after batch 1 of epoch 1
    resumed = _Record()
    run(tmp_path / 'resumed', resumed, resume_from=str(tmp_path / 'stopped' / 'iter_4.pth'))
    assert sorted(resumed.masks) == [4, 5]
    for it, masks in resumed.masks.items():
        assert torch.equal(masks, straight.masks[it]), f'iteration {it}'


def test_the_training_process_draws_no_mask(tmp_path, monkeypatch):
    calls = []
    law = masking.generate_masks

    def counted(*args, **kwargs):
        calls.append(1)
        return law(*args, **kwargs)

    monkeypatch.setattr(masking, 'generate_masks', counted)
    cfg = tiny_method_cfg('ibot', tmp_path, num_train=NUM_TRAIN, batch=BATCH)
    cfg.train_cfg.max_epochs = 1
    cfg.train_dataloader.update(num_workers=2, persistent_workers=False)
    record = _Record()
    runner = Runner.from_cfg(cfg)
    runner.register_hook(record)
    runner.train()
    assert sorted(record.masks) == [0, 1, 2]  # the workers' masks reached every step
    assert calls == []  # forked workers count in their own copy of the list
    # the same count sees a draw in this process (a batch without masks)
    batch = next(iter(runner.train_dataloader))
    del batch['masks'], batch['mask_law']
    runner.model.data_preprocessor(batch, True)
    assert calls == [1]
