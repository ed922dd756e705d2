"""PrototypeMonitorHook: kappa quantiles against numpy, collapse warnings (once) in real runs."""
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from mmengine.config import Config
from mmengine.runner import Runner

from mmselfsup_vmf.engine.hooks import PrototypeMonitorHook
from mmselfsup_vmf.engine.hooks.prototype_monitor import (
    entropy_of,
    kappa_quantiles,
    mutual_information,
    prototype_redundancy,
)
from mmselfsup_vmf.models.algorithms import DINO

ROOT = Path(__file__).resolve().parents[3]


def test_kappa_quantiles_match_numpy():
    norms = torch.rand(1000, generator=torch.Generator().manual_seed(0)) * 5
    got = kappa_quantiles(norms, 0.1)
    want = np.quantile(norms.double().numpy() / 0.1, [0.05, 0.5, 0.95])
    assert list(got) == ['q05', 'q50', 'q95']
    np.testing.assert_allclose([got['q05'], got['q50'], got['q95']], want, rtol=1e-12)
    # hand-checked: kappa = (10, 20, 30, 40, 50); linear interpolation
    small = kappa_quantiles(torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0]), 0.1, (0.0, 0.25, 1.0))
    assert small == pytest.approx({'q00': 10.0, 'q25': 20.0, 'q100': 50.0})


def test_entropy_of_uniform_and_point_mass():
    assert entropy_of(torch.full((8,), 1 / 8)) == pytest.approx(math.log(8))
    assert entropy_of(torch.tensor([1.0, 0.0, 0.0])) == pytest.approx(0.0)


def test_mutual_information_hand_cases_and_numpy():
    # two images on two different prototypes: H(pbar) = ln 2, E[H(p)] = 0
    assert mutual_information(torch.eye(2))['mutual_information'] == pytest.approx(math.log(2))
    # every image the same soft distribution: the assignment says nothing about the image
    same = torch.tensor([[0.7, 0.2, 0.1]] * 4)
    assert mutual_information(same)['mutual_information'] == pytest.approx(0.0, abs=1e-15)
    p = torch.softmax(torch.randn(50, 16, generator=torch.Generator().manual_seed(1)), -1)
    q = p.double().numpy()
    pbar = q.mean(0)
    want = -(pbar * np.log(pbar)).sum() + (q * np.log(q)).sum(1).mean()
    got = mutual_information(p)
    assert got['mutual_information'] == pytest.approx(want, rel=1e-6)
    assert got['pbar_entropy'] == pytest.approx(-(pbar * np.log(pbar)).sum(), rel=1e-6)


def test_prototype_redundancy_groups_near_duplicates():
    def unit(angle_deg, plane=(0, 1), dim=6, scale=1.0):
        v = torch.zeros(dim, dtype=torch.float64)
        v[plane[0]] = math.cos(math.radians(angle_deg))
        v[plane[1]] = math.sin(math.radians(angle_deg))
        return scale * v
    # a chain 0°, 20°, 40° in one plane (cos 0.940 between neighbours, 0.766 end to end):
    # one group of 3 although its ends are not near-duplicates; a pair at 0° and 15° in a
    # second plane (cos 0.966, norms 1 and 3: only the direction counts); one alone
    weight = torch.stack([unit(0), unit(20), unit(40), unit(0, (2, 3)),
                          unit(15, (2, 3), scale=3.0), unit(0, (4, 5))])
    got = prototype_redundancy(weight, 0.9)
    assert (got['dup_groups'], got['dup_members']) == (2, 5)
    cos = np.array([[math.cos(math.radians(a - b)) for b in (0, 20, 40)] for a in (0, 20, 40)])
    assert got['cos_max'] == pytest.approx(math.cos(math.radians(15)))
    # off-diagonal mean over 30 ordered pairs: the chain's 6, the pair's 2, the rest 0
    assert got['cos_mean'] == pytest.approx(((cos.sum() - 3) + 2 * got['cos_max']) / 30)
    assert prototype_redundancy(weight, 0.95)['dup_groups'] == 1  # only the 15° pair


def test_bad_arguments_are_clear_errors():
    with pytest.raises(ValueError, match='interval'):
        PrototypeMonitorHook(interval=0)
    with pytest.raises(ValueError, match='quantiles'):
        PrototypeMonitorHook(quantiles=(0.5, 1.5))
    with pytest.raises(ValueError, match='uniform_ratio'):
        PrototypeMonitorHook(uniform_ratio=0.0)
    with pytest.raises(ValueError, match='redundancy_threshold'):
        PrototypeMonitorHook(redundancy_threshold=1.0)


# --------------------------------------------------------------------- in a Runner
def runner_for(work_dir, teacher_temp=0.04, lr=1e-3, epochs=1):
    """The DINO-vMF demo config (which registers the monitor) on 32 digits, batch 16."""
    cfg = Config.fromfile(str(ROOT / 'configs/dino_vmf/demo_fashion-mnist.py'))
    inner = cfg.train_dataloader.dataset.dataset
    cfg.train_dataloader.dataset.dataset = dict(
        type='SklearnDigits', split='train', image_size=28, num_train=32,
        pipeline=inner.pipeline)
    cfg.train_dataloader.update(batch_size=16, num_workers=0, persistent_workers=False)
    cfg.custom_hooks = [h for h in cfg.custom_hooks if h['type'] != 'KNNHook']
    cfg.model.backbone.arch = dict(embed_dims=32, num_layers=1, num_heads=2,
                                   feedforward_channels=64)
    cfg.model.head.update(in_channels=32, hidden_channels=64)
    cfg.model.teacher_temp = dict(start=teacher_temp, end=teacher_temp, warmup_epochs=0)
    cfg.optim_wrapper.optimizer.lr = lr
    cfg.train_cfg.max_epochs = epochs
    cfg.default_hooks.logger.interval = 1
    cfg.default_hooks.checkpoint = dict(type='CheckpointHook', interval=100)
    cfg.visualizer.vis_backends = [dict(type='LocalVisBackend')]
    cfg.work_dir = str(work_dir)
    return Runner.from_cfg(cfg)


def warnings_in_log(runner):
    text = Path(runner.log_dir, f'{runner.timestamp}.log').read_text()
    return [line for line in text.splitlines() if 'PrototypeMonitorHook (iter' in line]


def test_logs_kappa_quantiles_of_the_student(tmp_path):
    runner = runner_for(tmp_path)
    assert any(isinstance(h, PrototypeMonitorHook) for h in runner.hooks)
    with torch.no_grad():  # spread the student's prototype norms (its kappa = ||w|| / 0.1)
        g = runner.model.head.last_layer.parametrizations.weight.original0
        g.copy_(torch.linspace(0.2, 3.0, g.shape[0]).unsqueeze(1))
    runner.train()
    model = runner.model
    assert isinstance(model, DINO)
    kappa = model.head.last_layer.weight.detach().norm(dim=1).double().numpy() / 0.1
    want = np.quantile(kappa, [0.05, 0.5, 0.95])
    hub = runner.message_hub
    got = [hub.get_scalar(f'train/kappa_{q}').current() for q in ('q05', 'q50', 'q95')]
    np.testing.assert_allclose(got, want, rtol=1e-6)
    assert 2.0 < got[0] < got[1] < got[2] < 30.0
    # probability centering is on in DINO-vMF: the entropy of Pbar is logged as well
    pbar = model.loss_module.center.center.double()
    pbar = pbar / pbar.sum()
    assert hub.get_scalar('train/pbar_entropy').current() == pytest.approx(
        float(-(pbar * pbar.log()).sum()), rel=1e-6)
    assert warnings_in_log(runner) == []  # a healthy start warns about nothing
    # the last logged redundancy is that of the final student prototypes
    want = prototype_redundancy(model.head.last_layer.weight)
    for key, value in want.items():
        assert hub.get_scalar(f'train/proto_{key}').current() == pytest.approx(value), key
    # I(x;k) of a 16-image batch lies in [0, ln 16]; H(pbar) in [0, ln K]
    mi = hub.get_scalar('train/teacher_mi').current()
    assert 0.0 <= mi <= math.log(16) + 1e-9
    assert mi <= hub.get_scalar('train/teacher_pbar_entropy').current() <= math.log(
        model.loss_module.num_prototypes) + 1e-9


def test_warns_once_when_the_teacher_is_near_uniform(tmp_path):
    """A huge teacher temperature makes the teacher uniform: entropy > 0.98 ln K."""
    runner = runner_for(tmp_path, teacher_temp=1000.0)
    runner.train()
    assert runner.message_hub.get_scalar('train/teacher_entropy').current() > 0.98 * math.log(
        runner.model.loss_module.num_prototypes)
    lines = warnings_in_log(runner)
    assert len(lines) == 1 and 'near uniform' in lines[0], lines


def test_warns_once_on_one_prototype_collapse(tmp_path):
    """Constant features (last MLP layer zeroed, lr 0) give every image the same teacher
    argmax: one prototype over a batch of 16 images."""
    runner = runner_for(tmp_path, lr=0.0)
    with torch.no_grad():
        for module in (runner.model.head, runner.model.teacher.module['head']):
            module.mlp[-1].weight.zero_()
            module.mlp[-1].bias.copy_(torch.linspace(-1, 1, module.mlp[-1].bias.numel()))
    runner.train()
    assert runner.message_hub.get_scalar('train/teacher_unique_argmax').current() == 1
    lines = warnings_in_log(runner)
    assert len(lines) == 1 and 'one-prototype collapse' in lines[0], lines
