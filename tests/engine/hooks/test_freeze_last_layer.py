"""FreezeLastLayerHook in a real Runner: the student's prototype layer (g and v) does not move
during the first N epochs (AdamW with weight decay: not even decay), everything else does;
the EMA teacher is not frozen; after N epochs the prototype layer trains."""
import pytest
import torch
from mmengine.hooks import Hook
from mmengine.runner import Runner

from mmselfsup_vmf.engine.hooks import FreezeLastLayerHook

LAST = ('head.last_layer.parametrizations.weight.original0',
        'head.last_layer.parametrizations.weight.original1')


class _Snapshots(Hook):
    """Parameters before and after every training iteration."""
    priority = 'LOWEST'

    def __init__(self):
        self.iters = []

    def _state(self, runner):
        return {n: p.detach().clone() for n, p in runner.model.named_parameters()}

    def before_train_iter(self, runner, batch_idx, data_batch=None):
        self.iters.append(dict(epoch=runner.epoch, before=self._state(runner)))

    def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None):
        self.iters[-1]['after'] = self._state(runner)


def tiny_runner(tmp_path, freeze_epochs, epochs, wrapper='DistillOptimWrapper', hooks=()):
    pipeline = [dict(type='MultiCrop', num_global=2, num_local=1, global_size=16,
                     local_size=8, interpolation='bilinear'),
                dict(type='PackInputs')]
    return Runner(
        model=dict(
            type='DINO',
            backbone=dict(type='VisionTransformer', img_size=16, patch_size=8,
                          out_type='cls_token',
                          arch=dict(embed_dims=24, num_layers=1, num_heads=2,
                                    feedforward_channels=48)),
            head=dict(type='DINOHead', in_channels=24, hidden_channels=32,
                      bottleneck_channels=16, num_prototypes=32, norm_last_layer=False),
            loss=dict(type='DINOLoss', num_prototypes=32, dim=16),
            teacher_momentum=0.9,
            data_preprocessor=dict(type='SelfSupDataPreprocessor', mean=[128.0] * 3,
                                   std=[64.0] * 3)),
        work_dir=str(tmp_path),
        train_dataloader=dict(
            batch_size=8, num_workers=0, drop_last=True,
            sampler=dict(type='DefaultSampler', shuffle=True),
            collate_fn=dict(type='default_collate'),
            dataset=dict(type='SklearnDigits', image_size=16, num_train=16,
                         pipeline=pipeline)),
        train_cfg=dict(by_epoch=True, max_epochs=epochs),
        optim_wrapper=dict(type=wrapper,
                           optimizer=dict(type='AdamW', lr=1e-2, weight_decay=0.5),
                           paramwise_cfg=dict(bias_decay_mult=0.0, norm_decay_mult=0.0,
                                              flat_decay_mult=0.0)),
        custom_hooks=[dict(type='FreezeLastLayerHook', epochs=freeze_epochs), *hooks],
        default_hooks=dict(checkpoint=None, logger=dict(type='LoggerHook', interval=100)),
        default_scope='mmpretrain',
        randomness=dict(seed=0))


def test_last_layer_frozen_for_n_epochs_then_trains(tmp_path):
    snaps = _Snapshots()
    runner = tiny_runner(tmp_path, freeze_epochs=1, epochs=2, hooks=[snaps])
    runner.train()
    hook = next(h for h in runner.hooks if isinstance(h, FreezeLastLayerHook))
    model = runner.model
    # the hook holds exactly the student's g and v, never a teacher tensor
    student_last = [p for n, p in model.named_parameters() if n in LAST]
    assert len(hook.params) == 2 and all(any(p is q for q in student_last)
                                         for p in hook.params)
    assert all(p.requires_grad for p in student_last)  # g trainable: it is decayed

    assert [s['epoch'] for s in snaps.iters] == [0, 0, 1, 1]
    trained = [n for n, p in model.named_parameters()
               if p.requires_grad and n not in LAST]
    for it in snaps.iters:
        before, after = it['before'], it['after']
        moved = {n for n in before if not torch.equal(before[n], after[n])}
        if it['epoch'] < 1:
            assert not moved & set(LAST), 'last layer moved while frozen'
        else:
            assert set(LAST) <= moved, 'last layer did not train after the freeze'
        assert set(trained) <= moved  # every other student tensor trains every iteration
        # the teacher is not frozen: from iteration 1 on its EMA moves it
        if it is not snaps.iters[0]:
            assert any(n.startswith('teacher.') for n in moved)
    # after the freeze the teacher's prototype layer follows the student's by EMA
    first, last = snaps.iters[0]['before'], snaps.iters[-1]['after']
    t_v = 'teacher.module.' + LAST[1]
    assert not torch.equal(first[t_v], last[t_v])


def test_zero_epochs_freezes_nothing_and_wrong_wrapper_fails(tmp_path):
    snaps = _Snapshots()
    tiny_runner(tmp_path / 'a', freeze_epochs=0, epochs=1, hooks=[snaps]).train()
    it = snaps.iters[0]
    assert all(not torch.equal(it['before'][n], it['after'][n]) for n in LAST)

    runner = tiny_runner(tmp_path / 'b', freeze_epochs=1, epochs=1, wrapper='OptimWrapper')
    with pytest.raises(TypeError, match='DistillOptimWrapper'):
        runner.train()
    with pytest.raises(ValueError, match='epochs must be >= 0'):
        FreezeLastLayerHook(epochs=-1)
