"""What a new user meets with ``tools/train.py`` (called in-process as from the shell):
a recipe without its data, ``--epochs 1`` on a 2-iteration epoch, ``--resume`` of a finished
run (k-NN label; extending it with a longer ``--epochs``) and DINO's argument names.
The runs are real: the DINO demo config with a 48-d ViT on 32 scikit-learn digits."""
import json
import math
import os.path as osp
import sys

import pytest
from mmengine.config import Config
from testing_utils import ROOT, load_tool

sys.path.insert(0, osp.join(ROOT, 'tests', 'integration'))
from tiny_dino_cfg import tiny_method_cfg  # noqa: E402

train = load_tool('tools/train.py', 'train_tool')


def tiny_config(tmp_path, knn=False):
    """The DINO demo (3 epochs, 1-epoch linear warm-up) on 2 iterations per epoch."""
    cfg = tiny_method_cfg('dino', tmp_path / 'unused')
    if knn:  # before_train=True as in the demo configs, on the digits themselves
        loader = dict(batch_size=64, num_workers=0, collate_fn=dict(type='default_collate'),
                      sampler=dict(type='DefaultSampler', shuffle=False),
                      dataset=dict(type='SklearnDigits', split='train', image_size=28,
                                   num_train=64, pipeline=[dict(type='PackInputs')]))
        cfg.custom_hooks.append(dict(type='KNNHook', train_dataloader=loader,
                                     val_dataloader=loader, k=5, before_train=True))
    path = str(tmp_path / 'tiny_dino.py')
    cfg.dump(path)
    return path


def logged_lrs(work_dir):
    """lr of every logged iteration (logger interval 1), from mmengine's scalars file."""
    (path,) = [osp.join(d, 'vis_data', 'scalars.json') for d in
               sorted(p for p in map(str, work_dir.iterdir()) if osp.isdir(p))
               if osp.isfile(osp.join(d, 'vis_data', 'scalars.json'))][-1:]
    rows = [json.loads(line) for line in open(path)]
    return [r['lr'] for r in rows if 'lr' in r]


def test_a_recipe_without_its_data_names_the_key_the_path_and_the_fix(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no data/imagenet here
    with pytest.raises(FileNotFoundError) as err:
        train.main([osp.join(ROOT, 'configs', 'dino', 'vit-s16_8xb64.py'), '--epochs', '2',
                    '--epoch-iters', '5', '--work-dir', str(tmp_path / 'work')])
    message = str(err.value)
    assert "train_dataloader.dataset.dataset.data_root='data/imagenet/' does not exist" in message
    assert ('--cfg-options train_dataloader.dataset.dataset.data_root=/path/to/data' in message
            and 'docs/custom_dataset.md' in message and '\n' not in message)


def test_epochs_1_on_a_two_iteration_epoch_trains(tmp_path):
    """mmengine would truncate the 1/3-epoch warm-up to [0, 0) and refuse; rounded it is one
    iteration of the recipe's LinspaceLR, which is DINO's ``np.linspace(0, base, 1) = [0]``:
    lr 0 at iteration 0, then the cosine from the base lr."""
    config = tiny_config(tmp_path)
    runner = train.main([config, '--epochs', '1', '--work-dir', str(tmp_path / 'run')])
    assert runner.iter == 2
    cfg = Config.fromfile(config)
    base = cfg.optim_wrapper.optimizer.lr * 16 / cfg.auto_scale_lr.base_batch_size
    assert logged_lrs(tmp_path / 'run') == pytest.approx([0.0, base], rel=1e-12)
    assert [type(s).__name__ for s in runner.param_schedulers] == [
        'LinspaceLR', 'CosineAnnealingLR', 'CosineAnnealingParamScheduler']
    assert [(s.begin, s.end) for s in runner.param_schedulers[1:]] == [(1, 2), (0, 2)]


def test_resume_labels_its_knn_and_refuses_a_longer_schedule_with_the_fix(tmp_path):
    config = tiny_config(tmp_path, knn=True)
    work = str(tmp_path / 'run')
    first = train.main([config, '--epochs', '1', '--work-dir', work])
    knn = [h for h in first.hooks if type(h).__name__ == 'KNNHook'][0]
    assert [stage for stage, _ in knn.history] == ['before training', 'epoch 1']

    resumed = train.main([config, '--epochs', '1', '--work-dir', work, '--resume'])
    knn = [h for h in resumed.hooks if type(h).__name__ == 'KNNHook'][0]
    assert [stage for stage, _ in knn.history] == ['at resume (iteration 2)']

    # 1 -> 2 epochs: mmengine would restore the 1-epoch schedule and run at its final lr
    with pytest.raises(ValueError) as err:
        train.main([config, '--epochs', '2', '--work-dir', work, '--resume'])
    message = str(err.value)
    assert message.startswith('cannot resume into another schedule')
    assert 'CosineAnnealingLR' in message and 'end 2 vs 4' in message
    checkpoint = osp.join(work, 'epoch_1.pth')
    assert f'--cfg-options load_from={checkpoint}' in message and '--work-dir' in message

    # the fix it names: a new run of 2 epochs from the checkpoint's weights
    # its own experiment name: mmengine names the visualizer after the start second, and a
    # run started in the same second as the refused one would log into that run's work dir
    longer = train.main([config, '--epochs', '2', '--work-dir', str(tmp_path / 'longer'),
                         '--cfg-options', f'load_from={checkpoint}',
                         'experiment_name=longer_schedule'])
    assert longer.iter == 4 and longer.epoch == 2
    cfg = Config.fromfile(config)
    base = cfg.optim_wrapper.optimizer.lr * 16 / cfg.auto_scale_lr.base_batch_size
    # 2 epochs of 2 iterations: a 1-iteration warm-up at lr 0, cosine over iterations 1..3
    lrs = logged_lrs(tmp_path / 'longer')
    eta_min = cfg.param_scheduler[1].eta_min
    expected = [0.0] + [eta_min + (base - eta_min) * (1 + math.cos(math.pi * t / 3)) / 2
                         for t in range(3)]
    assert lrs == pytest.approx(expected, rel=1e-9)


@pytest.mark.parametrize('option, ours', [
    ('model.head.out_dim=4096', 'model.head.num_prototypes'),
    ('model.head.nlayers=2', 'model.head.num_layers'),
    ('model.head.bottleneck_dim=32', 'model.head.bottleneck_channels'),
    ('model.loss.out_dim=4096', 'model.loss.num_prototypes')])
def test_dino_argument_names_are_mapped_to_ours(tmp_path, option, ours):
    with pytest.raises(ValueError) as err:
        train.main([tiny_config(tmp_path), '--work-dir', str(tmp_path / 'run'),
                    '--cfg-options', option])
    name = option.split('=')[0]
    assert f'{name} is the official DINO/iBOT name' in str(err.value)
    assert f'calls it {ours}' in str(err.value)


def test_an_unknown_argument_lists_the_real_ones(tmp_path):
    with pytest.raises(ValueError) as err:
        train.main([tiny_config(tmp_path), '--work-dir', str(tmp_path / 'run'),
                    '--cfg-options', 'model.head.hiden_channels=64'])
    assert 'model.head.hiden_channels is not an argument of DINOHead' in str(err.value)
    assert 'hidden_channels' in str(err.value) and 'num_prototypes' in str(err.value)
