"""KNNHook inside a real mmengine Runner, on the digits dataset with raw-pixel features."""
import glob
import json
import os.path as osp

import numpy as np
import pytest
import torch
from mmengine.model import BaseModel
from mmengine.runner import Runner
from mmpretrain.registry import MODELS

from mmselfsup_vmf.engine.hooks import KNNHook


@MODELS.register_module(name='_KNNHookTestModel', force=True)
class _KNNHookTestModel(BaseModel):
    """Raw pixels as k-NN features; a linear layer trained on a dummy loss.

    Records (key, training, grad enabled) of every ``knn_features`` call and the training
    flag of every loss forward, so the test can check eval mode / no_grad / restoration.
    """

    def __init__(self):
        super().__init__(data_preprocessor=dict(type='ImgDataPreprocessor'))
        self.linear = torch.nn.Linear(3 * 8 * 8, 4)
        self.knn_calls = []
        self.train_flags = []

    def knn_features(self, data_batch, key):
        self.knn_calls.append((key, self.training, torch.is_grad_enabled()))
        inputs = self.data_preprocessor(data_batch, False)['inputs']
        return inputs.flatten(1)

    def forward(self, inputs, data_samples=None, mode='loss'):
        self.train_flags.append(self.training)
        return {'loss': self.linear(inputs.flatten(1) / 255).pow(2).mean()}


class _NoKNNModel(_KNNHookTestModel):
    knn_features = None


def _digits_loader(split, shuffle=False):
    return dict(batch_size=128, num_workers=0,
                sampler=dict(type='DefaultSampler', shuffle=shuffle),
                dataset=dict(type='SklearnDigits', split=split, image_size=8,
                             pipeline=[dict(type='PackInputs')]))


def _runner(tmp_path, hook_cfg, train_cfg, model=None):
    return Runner(
        model=model or dict(type='_KNNHookTestModel'),
        work_dir=str(tmp_path),
        train_dataloader=_digits_loader('train', shuffle=True),
        train_cfg=train_cfg,
        optim_wrapper=dict(optimizer=dict(type='SGD', lr=0.01)),
        custom_hooks=[hook_cfg],
        default_hooks=dict(checkpoint=None),
        default_scope='mmpretrain',
        randomness=dict(seed=0))


def raw_pixel_knn_top1(k=20, temperature=0.07):
    """Independent float64 numpy weighted k-NN on the digits split used by the hook."""
    from mmpretrain.registry import DATASETS
    data = {s: DATASETS.build(dict(type='SklearnDigits', split=s, image_size=8))
            for s in ('train', 'test')}
    x = {s: np.stack([d.get_data_info(i)['img'].reshape(-1) for i in range(len(d))])
         .astype(np.float64) for s, d in data.items()}
    y = {s: d.get_gt_labels() for s, d in data.items()}
    tr = x['train'] / np.linalg.norm(x['train'], axis=1, keepdims=True)
    te = x['test'] / np.linalg.norm(x['test'], axis=1, keepdims=True)
    sims = te @ tr.T
    hits = 0
    for row, truth in zip(sims, y['test']):
        nn = np.argsort(-row, kind='stable')[:k]
        votes = np.bincount(y['train'][nn], weights=np.exp(row[nn] / temperature),
                            minlength=10)
        hits += int(np.argmax(votes) == truth)
    return 100.0 * hits / len(y['test'])


def _json_lines(path):
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def test_hook_logs_knn_accuracy_through_runner(tmp_path):
    hook_cfg = dict(type='KNNHook', train_dataloader=_digits_loader('train'),
                    val_dataloader=_digits_loader('test'), before_train=True)
    runner = _runner(tmp_path, hook_cfg, dict(by_epoch=True, max_epochs=2))
    runner.train()
    hook = next(h for h in runner.hooks if isinstance(h, KNNHook))
    model = runner.model

    # Raw-pixel features do not change with training, so every evaluation must equal the
    # independent float64 numpy result (one test image of slack for float32 near-ties).
    expected = raw_pixel_knn_top1()
    assert expected > 90.0
    assert abs(hook.last_result['knn/top1'] - expected) <= 100.0 / 497 + 1e-9
    assert runner.message_hub.get_scalar('knn/top1').current() == hook.last_result['knn/top1']
    # the raw-pixel baseline tools/demo.py prints: the loaders' own images, same protocol
    assert abs(hook.evaluate_raw_inputs(runner)['knn/top1'] - expected) <= 100.0 / 497 + 1e-9

    # knn_features ran with key='teacher', in eval mode, without grad; training resumed in
    # train mode after each evaluation (3 evaluations x 2 loaders x ceil(1300/128 | 497/128)).
    assert len(model.knn_calls) == 3 * (11 + 4)
    assert set(model.knn_calls) == {('teacher', False, False)}
    assert len(model.train_flags) == 2 * 11 and all(model.train_flags)
    assert model.training

    # The values land in the timestamped json log and in scalars.json of the vis backend.
    vis_dir = osp.join(runner.log_dir, 'vis_data')
    for name in (f'{runner.timestamp}.json', 'scalars.json'):
        knn_lines = [r for r in _json_lines(osp.join(vis_dir, name)) if 'knn/top1' in r]
        assert [r['step'] for r in knn_lines] == [0, 11, 22]
        assert knn_lines[-1]['knn/top1'] == pytest.approx(hook.last_result['knn/top1'])
        assert 0 < knn_lines[-1]['knn/top5'] <= 100
    log_file, = glob.glob(osp.join(runner.log_dir, '*.log'))
    with open(log_file) as f:
        log = f.read()
    assert 'k-NN before training' in log and 'k-NN epoch 2' in log
    assert 'k=20, T=0.07' in log and 'knn/top1: ' in log


def test_hook_by_iteration_with_several_k(tmp_path):
    hook_cfg = dict(type='KNNHook', train_dataloader=_digits_loader('train'),
                    val_dataloader=_digits_loader('test'), by_epoch=False, interval=2,
                    k=(10, 20), prefix='probe', key='student')
    runner = _runner(tmp_path, hook_cfg, dict(by_epoch=False, max_iters=5))
    runner.train()
    hook = next(h for h in runner.hooks if isinstance(h, KNNHook))
    assert sorted(hook.last_result) == ['probe/k10/top1', 'probe/k10/top5',
                                        'probe/k20/top1', 'probe/k20/top5']
    assert abs(hook.last_result['probe/k20/top1'] - raw_pixel_knn_top1(k=20)) <= 100.0 / 497
    assert abs(hook.last_result['probe/k10/top1'] - raw_pixel_knn_top1(k=10)) <= 100.0 / 497
    lines = _json_lines(osp.join(runner.log_dir, 'vis_data', 'scalars.json'))
    # every 2 iterations, and after the last (5th) one
    assert [r['step'] for r in lines if 'probe/k20/top1' in r] == [2, 4, 5]
    assert {c[0] for c in runner.model.knn_calls} == {'student'}


def test_hook_needs_knn_features(tmp_path):
    MODELS.register_module(name='_NoKNNModel', module=_NoKNNModel, force=True)
    hook_cfg = dict(type='KNNHook', train_dataloader=_digits_loader('train'),
                    val_dataloader=_digits_loader('test'))
    runner = _runner(tmp_path, hook_cfg, dict(by_epoch=True, max_epochs=1),
                     model=dict(type='_NoKNNModel'))
    hook = next(h for h in runner.hooks if isinstance(h, KNNHook))
    with pytest.raises(TypeError, match=r'needs _NoKNNModel.knn_features\(data_batch, key\)'):
        hook.evaluate(runner)


@pytest.mark.parametrize('kwargs, match', [(dict(interval=0), 'interval must be >= 1'),
                                           (dict(temperature=-1.0), 'temperature must be > 0')])
def test_hook_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        KNNHook(train_dataloader={}, val_dataloader={}, **kwargs)
