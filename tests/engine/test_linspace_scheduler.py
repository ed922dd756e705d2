"""LinspaceLR against the official closed forms, re-derived here in float64 numpy.

DINO / iBOT / SimDINO (``utils.cosine_scheduler``): ``np.linspace(0, peak, W)`` then
``final + (peak - final) (1 + cos(pi i / (T - W))) / 2``; weight decay and teacher momentum are
the same cosine without warm-up. DINOv2 / SimDINOv2 (``CosineScheduler``): warm-up
``start + (peak - start) it / W``. The schedulers are built from the recipes' own
``param_scheduler`` entries the way mmengine's Runner builds them, after ``--epochs`` shortening.
"""
import numpy as np
import pytest
import torch
from mmengine.config import Config
from mmengine.registry import PARAM_SCHEDULERS
from testing_utils import ROOT

import mmselfsup_vmf  # noqa: F401  (registers LinspaceLR)
from mmselfsup_vmf.engine.short_run import shorten_run


def dino_cosine(peak, final, total, warmup):
    """DINO's cosine_scheduler written out per iteration (warm-up from 0)."""
    it = np.arange(total, dtype=np.float64)
    cos = final + 0.5 * (peak - final) * (1 + np.cos(np.pi * (it - warmup) / (total - warmup)))
    ramp = peak * it / (warmup - 1) if warmup > 1 else np.zeros_like(it)
    return np.where(it < warmup, ramp, cos)


def dinov2_cosine(peak, final, total, warmup, start):
    it = np.arange(total, dtype=np.float64)
    cos = final + 0.5 * (peak - final) * (1 + np.cos(np.pi * (it - warmup) / (total - warmup)))
    return np.where(it < warmup, start + (peak - start) * it / warmup, cos)


def run_schedulers(entries, lrs, wd, total, epoch_length=None):
    """Step mmengine-built schedulers ``total`` times; the values before each step."""
    params = [torch.nn.Parameter(torch.zeros(2)) for _ in lrs]
    optim = torch.optim.AdamW([dict(params=[p], lr=lr, weight_decay=w)
                               for p, lr, w in zip(params, lrs, wd)])
    scheds = []
    for entry in entries:
        entry = dict(entry)
        cls = PARAM_SCHEDULERS.get(entry.pop('type'))
        if entry.pop('convert_to_iter_based', False):
            scheds.append(cls.build_iter_from_epoch(optim, epoch_length=epoch_length, **entry))
        else:
            scheds.append(cls(optim, **entry))
    rows = []
    for _ in range(total):
        rows.append([(g['lr'], g['weight_decay']) for g in optim.param_groups])
        optim.step()
        for s in scheds:
            s.step()
    return np.array(rows)  # (iteration, group, lr / wd)


@pytest.mark.parametrize('config', ['dino/vit-s16_8xb64.py', 'ibot/vit-s16_8xb64.py',
                                    'simdino/vit-s16_8xb64.py', 'dino/vit-b16_8xb64.py'])
def test_recipes_follow_dinos_cosine_scheduler(config):
    cfg = Config.fromfile(f'{ROOT}/configs/{config}')
    epochs, epoch_iters = 10, 7  # warm-up 10/800 (or /100, /400) epochs -> 1 .. 7 iterations
    shorten_run(cfg, epochs=epochs, epoch_iters=epoch_iters)
    warm, cos, _ = cfg.param_scheduler
    assert warm.type == 'LinspaceLR' and warm.start_factor == 0.0
    total, peak, final = epochs * epoch_iters, 5e-4, cos.eta_min
    rows = run_schedulers(cfg.param_scheduler, [peak, peak], [0.04, 0.0], total)
    lr = dino_cosine(peak, final, total, warm.end)
    wd = 0.4 + 0.5 * (0.04 - 0.4) * (1 + np.cos(np.pi * np.arange(total) / total))
    assert rows[0, 0, 0] == 0.0  # exactly 0, not 1e-6 x peak
    for g in range(2):
        np.testing.assert_allclose(rows[:, g, 0], lr, rtol=1e-12, atol=1e-20)
    np.testing.assert_allclose(rows[:, 0, 1], wd, rtol=1e-12)
    assert not rows[:, 1, 1].any()  # the no-decay group stays at 0


@pytest.mark.parametrize('warmup', [1, 2, 5, 50])
def test_warmup_end_and_cosine_in_iterations(warmup):
    """Warm-up, its last point (the peak at W - 1), the hand-off and the cosine, W = 1 too."""
    total, peak, final = warmup + 40, 2e-3, 1e-6
    entries = [dict(type='LinspaceLR', by_epoch=False, begin=0, end=warmup),
               dict(type='CosineAnnealingLR', by_epoch=False, begin=warmup, end=total,
                    T_max=total - warmup, eta_min=final)]
    rows = run_schedulers(entries, [peak], [0.0], total)
    expected = dino_cosine(peak, final, total, warmup)
    np.testing.assert_allclose(rows[:, 0, 0], expected, rtol=1e-13, atol=1e-20)
    if warmup > 1:
        np.testing.assert_allclose(rows[:warmup, 0, 0], np.linspace(0, peak, warmup),
                                   rtol=1e-15, atol=0)
    assert rows[warmup, 0, 0] == pytest.approx(peak, rel=1e-15)  # the cosine starts at peak


def test_simdinov2_recipe_follows_dinov2_cosine_scheduler():
    """Layer-wise groups (lr x multiplier) each warm from 1e-6 x multiplier, peak at W."""
    cfg = Config.fromfile(f'{ROOT}/configs/simdinov2/vit-b16_8xb128.py')
    epochs, epoch_iters = 20, 3
    shorten_run(cfg, epochs=epochs, epoch_iters=epoch_iters)
    warm = cfg.param_scheduler[0]
    assert (warm.type, warm.endpoint) == ('LinspaceLR', False) and warm.end == 6
    total, base, min_lr = epochs * epoch_iters, 4e-3, 1e-6
    mults = [1.0, 0.9 ** 3, 0.2 * 0.9 ** 13]
    rows = run_schedulers(cfg.param_scheduler, [base * m for m in mults], [0.04] * 3, total)
    for g, m in enumerate(mults):
        expected = dinov2_cosine(base * m, min_lr * m, total, warm.end, min_lr * m)
        np.testing.assert_allclose(rows[:, g, 0], expected, rtol=1e-12)


def test_epoch_based_and_resumed_values():
    """Epoch-based (one value per epoch) and a scheduler rebuilt from its state dict."""
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = PARAM_SCHEDULERS.build(dict(type='LinspaceLR', optimizer=opt, begin=0, end=4,
                                        start_factor=0.25, end_factor=0.75))
    values = [opt.param_groups[0]['lr']]
    for _ in range(2):
        sched.step()
        values.append(opt.param_groups[0]['lr'])
    state = sched.state_dict()
    opt2 = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    opt2.param_groups[0]['initial_lr'] = 1.0
    resumed = PARAM_SCHEDULERS.build(dict(type='LinspaceLR', optimizer=opt2, begin=0, end=4,
                                          start_factor=0.25, end_factor=0.75, last_step=0))
    resumed.load_state_dict(state)
    for _ in range(3):
        resumed.step()
        values.append(opt2.param_groups[0]['lr'])
    np.testing.assert_allclose(values, [0.25, 5 / 12, 7 / 12, 0.75, 0.75, 0.75], rtol=1e-15)


def test_infinite_warmup_is_refused():
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    with pytest.raises(ValueError, match='finite end'):
        PARAM_SCHEDULERS.build(dict(type='LinspaceLR', optimizer=opt))
