"""The EMA teacher's frozen parameters give one log line when the optimiser is built, not one
warning each; the parameter groups are mmengine's."""
import glob
import os.path as osp

import pytest
from integration.tiny_dino_cfg import tiny_dino_cfg, tiny_method_cfg
from mmengine.config import Config
from mmengine.optim import DefaultOptimWrapperConstructor
from mmengine.runner import Runner
from testing_utils import ROOT, mmengine_messages


def build_with_messages(cfg):
    runner = Runner.from_cfg(cfg)
    with mmengine_messages() as messages:
        wrapper = runner.build_optim_wrapper(runner.optim_wrapper)
    return runner.model, wrapper, messages


@pytest.mark.parametrize('method', ['dino', 'simdinov2'])  # default and layer-decay constructor
def test_one_line_for_the_frozen_teacher(tmp_path, method):
    cfg = tiny_dino_cfg(tmp_path) if method == 'dino' else tiny_method_cfg(method, tmp_path)
    model, _, messages = build_with_messages(cfg)
    teacher = len(list(model.teacher.parameters()))
    assert teacher > 20 and all(not p.requires_grad for p in model.teacher.parameters())
    frozen = [m for m in messages if 'requires_grad=False' in m]
    assert frozen == [f'optimiser: {teacher} parameters with requires_grad=False are not '
                      f'optimised (teacher: {teacher})']


def test_one_line_for_the_decay_free_parameters(tmp_path):
    """bias_decay_mult = norm_decay_mult = flat_decay_mult = 0: every trainable 1-D tensor."""
    model, _, messages = build_with_messages(tiny_dino_cfg(tmp_path))
    flat = [n for n, p in model.named_parameters() if p.requires_grad and p.ndim == 1]
    assert not [m for m in messages if m.startswith('paramwise_options')]
    lines = [m for m in messages if 'weight_decay=0.0 on' in m]
    assert lines == [f'optimiser: weight_decay=0.0 on {len(flat)} parameters ({flat[0]}, '
                     f'{flat[1]}, {flat[2]} and {len(flat) - 3} more)']


def test_same_groups_as_mmengines_constructor(tmp_path):
    cfg = tiny_dino_cfg(tmp_path)
    model, wrapper, _ = build_with_messages(cfg)
    reference_cfg = dict(cfg.optim_wrapper)
    reference_cfg.pop('constructor')
    paramwise = reference_cfg.pop('paramwise_cfg')
    reference = DefaultOptimWrapperConstructor(reference_cfg, paramwise)(model)
    ours, theirs = wrapper.optimizer.param_groups, reference.optimizer.param_groups
    assert len(ours) == len(theirs)
    for a, b in zip(ours, theirs):
        assert a['params'][0] is b['params'][0]
        assert (a['lr'], a['weight_decay']) == (b['lr'], b['weight_decay'])


@pytest.mark.parametrize('config', sorted(
    glob.glob(osp.join(ROOT, 'configs', '*', 'demo_fashion-mnist.py'))
    + glob.glob(osp.join(ROOT, 'configs', '*', 'vit-*.py'))
    + [osp.join(ROOT, 'configs', 'examples', 'mmpretrain_mix_simdino.py')]))
def test_every_pretraining_config_uses_a_summarising_constructor(config):
    assert Config.fromfile(config).optim_wrapper.constructor in (
        'DistillOptimWrapperConstructor', 'LayerDecayOptimWrapperConstructor')
