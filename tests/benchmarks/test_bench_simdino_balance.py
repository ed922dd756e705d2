"""benchmarks/bench_simdino_balance.py: its gradient ratio against a float64 closed form, and
the balanced small-scale configs carry the rate_batch its calibration picks."""
import os.path as osp
import sys

import numpy as np
import pytest
from mmengine.config import Config

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
sys.path.insert(0, osp.join(ROOT, 'benchmarks'))


def load_bench():
    import bench_simdino_balance
    return bench_simdino_balance


def closed_form_ratio(student, teacher, n, eps):
    """‖∂loss_expa/∂S_glob‖ / ‖∂loss_comp/∂S_glob‖ for unit features, by hand:
    ∂cos(t, s)/∂s = t − cos(t, s)·s, and with Z = (s + t)/2,
    ∂R/∂s = ½ α Z (I + αZᵀZ)⁻¹, R = ½ logdet(I + αZᵀZ), α = d/(n·eps), γ = 1/n + 1/d."""
    s, t = student.numpy(), teacher.numpy()
    V, m, d = s.shape
    G = t.shape[0]
    alpha, gamma = d / (n * eps), 1 / n + 1 / d
    comp, expa = np.zeros((G, m, d)), np.zeros((G, m, d))
    for g in range(G):
        for h in range(G):
            if h != g:
                cos = np.sum(t[h] * s[g], -1, keepdims=True)
                comp[g] += (t[h] - cos * s[g]) / (G * (V - 1) * m)
        z = (s[g] + t[g]) / 2
        expa[g] = gamma / G * 0.5 * alpha * z @ np.linalg.inv(np.eye(d) + alpha * z.T @ z)
    return np.linalg.norm(expa) / np.linalg.norm(comp)


def test_ratio_matches_the_closed_form():
    bench = load_bench()
    # an official-style rank: 5 local rows, n = N·m = 10 in alpha and gamma
    got = bench.balance(V=4, G=2, m=5, N=2, d=6, sigma=1.0, seeds=1, eps=0.05)
    ref = closed_form_ratio(*bench.views(4, 2, 5, 6, 1.0, seed=0), n=10, eps=0.05)
    assert got['ratio'] == pytest.approx(ref, rel=1e-10)
    assert (got['n'], got['alpha'], got['gamma']) == (10, 6 / 0.5, 1 / 10 + 1 / 6)
    # rate_batch = 10 on one process gives the same n; the ratio is the mean over seeds
    mean = bench.balance(V=4, G=2, m=5, N=1, d=6, rate_batch=10, seeds=2)['ratio']
    refs = [closed_form_ratio(*bench.views(4, 2, 5, 6, 1.0, seed), n=10, eps=0.05)
            for seed in range(2)]
    assert mean == pytest.approx(np.mean(refs), rel=1e-10)


@pytest.mark.parametrize('method', ['simdino', 'simdinov2'])
def test_balanced_configs_use_the_calibrated_rate_batch(method):
    bench = load_bench()
    cfg = Config.fromfile(osp.join(ROOT, 'configs', 'benchmarks', 'small_scale',
                                   f'{method}_balanced.py'))
    study = bench.STUDY[method]
    rate_batch = cfg.model.loss.rate_batch
    # the config's width, batch and views are the ones the benchmark assumes
    assert cfg.model.head.bottleneck_channels == study['d']
    assert cfg.train_dataloader.batch_size == study['m']
    crops = cfg.train_pipeline[0]
    assert (crops.num_global, crops.num_global + crops.num_local) == (study['G'], study['V'])
    target = bench.balance(**bench.OFFICIAL[study['target']])['ratio']
    shape = {k: study[k] for k in ('V', 'G', 'm', 'N', 'd')}
    untranslated = bench.balance(**shape)['ratio']
    assert untranslated > 2 * target  # the imbalance the knob removes
    chosen = bench.calibrate(study, target, [rate_batch - 16, rate_batch, rate_batch + 16])
    assert chosen['n'] == rate_batch
    assert abs(chosen['ratio'] / target - 1) <= bench.TOLERANCE
