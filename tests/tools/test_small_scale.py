"""tools/benchmarks/small_scale.py: the smoke experiment end to end (Runner training, teacher
k-NN and logistic probe, raw-pixel row, table, figures), restart skipping, and the grids."""
import json
import math
import os
import os.path as osp
import sys

import cv2
import pytest

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
sys.path.insert(0, osp.join(ROOT, 'tools', 'benchmarks'))
import small_scale  # noqa: E402
from small_scale_run import set_epochs  # noqa: E402

FASHION = '/usr/share/datasets/fashion-mnist'


@pytest.mark.slow
@pytest.mark.skipif(not osp.isdir(FASHION), reason='Debian dataset-fashion-mnist not installed')
def test_smoke_study_writes_parsable_outputs(tmp_path, capsys):
    args = ['--experiment', 'smoke', '--methods', 'dino_vmf', '--out', str(tmp_path / 'out'),
            '--work-root', str(tmp_path / 'work'), '--in-process']
    assert small_scale.main(args) == 0
    exp = tmp_path / 'out' / 'smoke'
    run = json.loads((exp / 'runs' / 'dino_vmf_s0.json').read_text())
    # the full protocol on the smoke subsets: 1,000-image bank, 500 queries, 10 classes
    assert (run['num_bank'], run['num_queries']) == (1000, 500)
    assert 0 <= run['knn_top1'] <= 100 and 0 <= run['linear_top1'] <= 100
    assert run['iters'] == 256 // 64 and run['iters_per_epoch'] == 4
    # k-NN at init and after the epoch, from the training log; the last equals the final
    # teacher evaluation
    assert [round(e) for e, _ in run['knn_curve']] == [0, 1]
    assert run['knn_curve'][-1][1] == pytest.approx(run['knn_top1'])
    usage = run['prototype_usage']
    assert [h['iter'] for h in usage['history']] == [0, 2, 4]
    k = usage['history'][0]['num_prototypes']
    assert all(1 <= h['effective_number'] <= k + 1e-6 for h in usage['history'])
    assert len(usage['kappa']) == k
    # I(x;k) = H(pbar) - E[H(p)] with H(pbar) = ln(effective number)
    for h in usage['history']:
        assert h['mutual_information'] == pytest.approx(
            math.log(h['effective_number']) - h['mean_entropy'], abs=1e-5)
    assert 0 <= usage['redundancy']['dup_members'] <= k
    # the final teacher backbone is kept beside the runs and loads into a fresh backbone
    import torch
    from mmengine.config import Config
    from mmpretrain.registry import MODELS
    kept = run['teacher_backbone']
    saved = torch.load(exp / 'backbones' / 'dino_vmf_s0.pth', weights_only=True)
    assert kept['bytes'] == (exp / 'backbones' / 'dino_vmf_s0.pth').stat().st_size
    assert saved['meta']['run'] == 'dino_vmf_s0' and saved['meta']['key'] == 'teacher'
    cfg = Config.fromfile(osp.join(ROOT, 'configs/benchmarks/small_scale/dino_vmf.py'))
    cfg.merge_from_dict({k: v for k, v in small_scale.SMOKE_OVERRIDES.items()
                         if k.startswith('model.')})
    import mmselfsup_vmf  # noqa: F401
    backbone = MODELS.build(cfg.model.backbone)
    assert backbone.load_state_dict(saved['state_dict'], strict=True)
    assert kept['parameters'] == sum(p.numel() for p in backbone.state_dict().values())
    results = json.loads((exp / 'results.json').read_text())
    assert results['summary']['dino_vmf']['knn_top1'] == [run['knn_top1']]
    raw = results['raw_pixels']
    assert (raw['num_bank'], raw['num_queries'], raw['feature_dim']) == (1000, 500, 784)
    table = (exp / 'results.md').read_text().splitlines()
    assert table[2].startswith('| raw pixels |') and table[3].startswith('| dino_vmf |')
    for png in ('knn_vs_epoch.png', 'knn_final.png', 'prototype_usage.png'):
        image = cv2.imread(str(exp / png))
        assert image is not None and image.shape[0] > 100, png
    # with a README (and docs/benchmarks.md beside it) the report also rewrites their tables
    from small_scale_report import DOCS_MARKERS, README_END, README_START, write_report
    (tmp_path / 'docs').mkdir()
    readme, docs = tmp_path / 'README.md', tmp_path / 'docs' / 'benchmarks.md'
    readme.write_text(f'{README_START}\nold\n{README_END}\n')
    docs.write_text(f'{DOCS_MARKERS[0]}\nold\n{DOCS_MARKERS[1]}\n')
    written = write_report(str(exp), raw, str(readme))
    assert str(readme) in written and str(docs) in written
    knn = f'{run["knn_top1"]:.2f}'
    assert f'| DINO-vMF | 1 | {knn}' in readme.read_text()
    assert '| dino_vmf | DINO-vMF |' in docs.read_text() and 'old' not in docs.read_text()
    # a restart skips the finished run and only rewrites the report
    capsys.readouterr()
    assert small_scale.main(args) == 0
    assert '1 finished, 0 to run' in capsys.readouterr().out


def test_every_method_gets_the_same_sweep_grid():
    args = small_scale.parse_args(['--experiment', 'sweep'])
    runs = small_scale.sweep_runs(args)
    grids = {}
    for r in runs:
        grids.setdefault(r['method'], set()).add(tuple(sorted(r['overrides'].items())))
    assert set(grids) == set(small_scale.METHODS)
    assert len({frozenset(g) for g in grids.values()}) == 1
    assert len(next(iter(grids.values()))) == len(small_scale.SWEEP_LRS) * len(
        small_scale.SWEEP_MOMENTA)


def test_study_runs_are_methods_times_seeds_with_unique_names():
    args = small_scale.parse_args(['--seeds', '2', '--methods', 'dino', 'simdino'])
    names = [r['name'] for r in small_scale.study_runs(args)]
    assert sorted(names) == ['dino_s0', 'dino_s1', 'simdino_s0', 'simdino_s1']
    robust = small_scale.robustness_runs(small_scale.parse_args(['--experiment', 'robustness']))
    assert len({r['name'] for r in robust}) == len(robust)


def test_the_rerun_repeats_seed_0_of_the_dino_family_with_the_study_recipe():
    rerun = small_scale.study_rerun_runs(small_scale.parse_args(['--experiment', 'study_rerun']))
    study = {r['name']: r for r in small_scale.study_runs(small_scale.parse_args([]))}
    assert sorted(r['name'] for r in rerun) == ['dino_s0', 'dino_vmf_s0', 'ibot_s0', 'ibot_vmf_s0']
    for r in rerun:  # the same config, seed, epochs and tuned lr / momentum as the study run
        assert r['experiment'] == 'study_rerun'
        assert dict(r, experiment='study') == study[r['name']]


def test_the_long_moving_runs_are_the_moving_runs_at_three_epochs():
    long = small_scale.moving_long_runs(small_scale.parse_args(['--experiment', 'moving_long']))
    moving = {r['name']: r for r in small_scale.moving_runs(
        small_scale.parse_args(['--experiment', 'moving', '--epochs', '3']))}
    assert sorted(r['name'] for r in long) == [
        f'{m}_s{s}' for m in ('dino', 'simdino_balanced') for s in range(3)]
    for r in long:
        assert r['epochs'] == 3 and dict(r, experiment='moving') == moving[r['name']]
    other = small_scale.moving_long_runs(small_scale.parse_args(
        ['--experiment', 'moving_long', '--methods', 'ibot', '--seeds', '1']))
    assert [r['name'] for r in other] == ['ibot_s0']


def test_set_epochs_stretches_the_schedule():
    from mmengine.config import Config
    cfg = Config.fromfile(osp.join(ROOT, 'configs/benchmarks/small_scale/dino.py'))
    set_epochs(cfg, 7)
    assert cfg.train_cfg.max_epochs == 7
    cosine = next(s for s in cfg.param_scheduler if s['type'] == 'CosineAnnealingLR')
    assert (cosine['begin'], cosine['end'], cosine['T_max']) == (1, 7, 6)
    assert all(s['end'] <= 7 for s in cfg.param_scheduler)
    set_epochs(cfg, 1)  # short budget: warm-up is a quarter of it
    warmup = next(s for s in cfg.param_scheduler if s['type'] == 'LinearLR')
    cosine = next(s for s in cfg.param_scheduler if s['type'] == 'CosineAnnealingLR')
    assert warmup['end'] == cosine['begin'] == 0.25 and cosine['T_max'] == 0.75


def test_collapse_signs_name_each_kind_of_collapse():
    from small_scale_report import collapse_signs, collapse_table
    k = 1024

    def run(knn_curve, history=None, train_log=None):
        return dict(run_spec=dict(name='r', overrides={}), knn_curve=knn_curve,
                    knn_top1=knn_curve[-1][1], linear_top1=50.0,
                    prototype_usage=dict(history=history) if history else None,
                    train_log=train_log or {})

    def usage(entropy, effective, distinct):
        return [dict(mean_entropy=entropy, effective_number=effective,
                     distinct_argmax=distinct, num_prototypes=k)]
    ln_k = math.log(k)  # 6.931 nats
    healthy = collapse_signs(run([[0, 69.6], [1, 76.4]], usage(0.8 * ln_k, 660.0, 47)))
    assert healthy['verdict'] == 'learns'
    assert healthy['entropy_ratio'] == pytest.approx(0.8)
    # every image maps to the same near-uniform distribution, features stuck at init
    uniform = collapse_signs(run([[0, 69.6], [1, 70.1]], usage(0.99 * ln_k, 1024.0, 800)))
    assert uniform['verdict'] == 'k-NN at init, uniform teacher'
    # one prototype wins on every probe image (its effective number is 1)
    one = collapse_signs(run([[0, 69.6], [1, 75.0]], usage(0.01, 1.0, 1)))
    assert one['verdict'] == 'few prototypes'
    # the line is K / 100 = 10.24 effective prototypes, whatever the argmax count
    assert collapse_signs(run([[0, 60], [1, 70]], usage(0.1, 10.2, 30)))['verdict'] == (
        'few prototypes')
    assert collapse_signs(run([[0, 60], [1, 70]], usage(0.1, 10.3, 3)))['verdict'] == 'learns'
    # SimDINO: no prototypes; comp / expa are the last logged values
    sim = collapse_signs(run([[0, 68.1], [1, 68.5]],
                             train_log=dict(comp=[[10, 0.5], [20, 0.999]],
                                            global_comp=[[10, 0.4], [20, 0.998]],
                                            expa=[[10, 3.0], [20, 0.01]])))
    assert (sim['comp'], sim['global_comp'], sim['expa'], sim['verdict']) == (
        0.999, 0.998, 0.01, 'k-NN at init')
    table = collapse_table([run([[0, 69.6], [1, 70.1]], usage(0.99 * ln_k, 1024.0, 800))])
    # I(x;k) = ln 1024 - 0.99 ln 1024 = 0.0693 nats; no redundancy stored
    assert ('| r | — | 69.60 → 70.10 | 50.00 | 0.990 | 1024 | 800 | — | — | — | 0.069 | — / — |'
            in table)


def test_usage_table_reports_the_information_the_assignment_carries():
    from small_scale_report import usage_table

    def run(name, seed, effective, entropy, redundancy=None):
        return dict(run_spec=dict(name=f'{name}_s{seed}', seed=seed, overrides={}),
                    knn_curve=[], knn_top1=70.0, linear_top1=60.0,
                    prototype_usage=dict(history=[dict(
                        mean_entropy=entropy, effective_number=effective, distinct_argmax=40,
                        num_prototypes=1024)], redundancy=redundancy))
    # exp(H(pbar)) = e^6 and e^5.5 with E[H(p)] = 5.2 and 5.0: I = 0.8 and 0.5 nats. The
    # larger effective number comes with the softer teacher, not with more information
    runs = [run('dino', 0, math.exp(6.0), 5.2, dict(dup_groups=3, dup_members=7)),
            run('dino', 1, math.exp(5.5), 5.0, dict(dup_groups=5, dup_members=11)),
            run('dino_vmf', 0, math.exp(6.9), 6.5)]
    table = usage_table(runs)
    assert '| dino | 2 | 245–403 | 5.00–5.20 | 0.50–0.80 | 40 | 3–5 |' in table
    assert '| dino_vmf | 1 | 992 | 6.50 | 0.40 | 40 | — (not stored) |' in table


def test_paired_t_interval_and_p_against_the_closed_form_at_two_dof():
    from small_scale_stats import paired_t
    # differences 1, 2, 3: mean 2, sd 1, se 1/sqrt(3). With 2 degrees of freedom the t CDF
    # is F(t) = 1/2 + t / (2 sqrt(2 + t^2)), so t_0.975 = sqrt(2 a^2 / (1 - a^2)), a = 0.95,
    # and the two-sided p = 1 - t / sqrt(2 + t^2) at t = 2 sqrt(3)
    r = paired_t([1.0, 2.0, 3.0])
    q = math.sqrt(2 * 0.95 ** 2 / (1 - 0.95 ** 2))  # 4.302652...
    half = q / math.sqrt(3)
    t = 2 * math.sqrt(3)
    assert (r['mean'], r['sd'], r['n'], r['dof']) == (2.0, 1.0, 3, 2)
    assert (r['low'], r['high']) == (pytest.approx(2 - half, rel=1e-9),
                                     pytest.approx(2 + half, rel=1e-9))
    assert r['p'] == pytest.approx(1 - t / math.sqrt(2 + t * t), rel=1e-9)  # 0.0742


def test_welch_interval_against_a_hand_computation():
    from small_scale_stats import welch_t
    # a = 1, 2, 3 (var 1), b = 0, 0, 3 (var 3): difference 1, se = sqrt(1/3 + 1) = 2/sqrt(3),
    # Welch dof = (4/3)^2 / ((1/3)^2/2 + 1/2) = 16/5 = 3.2
    r = welch_t([1.0, 2.0, 3.0], [0.0, 0.0, 3.0])
    assert r['dof'] == pytest.approx(3.2)
    from scipy import stats
    se = 2 / math.sqrt(3)
    assert r['high'] - r['mean'] == pytest.approx(stats.t.ppf(0.975, 3.2) * se)
    assert r['p'] == pytest.approx(2 * stats.t.sf(1 / se, 3.2))


def test_claims_pair_seeds_only_where_the_initialisation_is_shared():
    from small_scale_report import claims_table
    from small_scale_stats import compare, verdict

    def run(method, seed, knn, linear=50.0):
        return dict(run_spec=dict(name=f'{method}_s{seed}', method=method, seed=seed),
                    knn_top1=knn, linear_top1=linear)
    # per-seed differences +1.0, +1.2, +0.8: mean 1.0, std 0.2; t_0.975,2 * 0.2/sqrt(3) = 0.497
    runs = [run('dino', s, v) for s, v in enumerate((70.0, 75.0, 72.0))]
    runs += [run('dino_vmf', s, v) for s, v in enumerate((71.0, 76.2, 72.8))]
    r = compare(runs, 'dino_vmf', 'dino', 'knn_top1')
    assert (r['mean'], r['sd'], r['n'], r['paired']) == (
        pytest.approx(1.0), pytest.approx(0.2), 3, True)
    assert r['low'] == pytest.approx(1.0 - 0.4968275, abs=1e-6)
    assert verdict(r).startswith('higher (95 % CI [+0.50, +1.50], p = 0.0')
    # the same values unpaired (std 2.5 across seeds) are inconclusive: the pairing matters,
    # and SimDINO against DINO is not paired at initialisation
    runs += [run('simdino', s, v) for s, v in enumerate((71.0, 76.2, 72.8))]
    r = compare(runs, 'simdino', 'dino', 'knn_top1')
    assert r['paired'] is False and verdict(r).startswith('inconclusive (95 % CI [')
    assert verdict(compare(runs[:2] + runs[3:5], 'dino_vmf', 'dino', 'knn_top1')) == \
        'no verdict (2 seeds)'
    # a seed only one side has finished is left out of the pairing
    runs.append(run('dino_vmf', 3, 99.0))
    assert compare(runs, 'dino_vmf', 'dino', 'knn_top1')['n'] == 3
    table = claims_table(runs)
    assert '| DINO-vMF ≥ DINO | 3 | paired by seed | +1.00 ± 0.20 | higher (' in table
    assert '| SimDINO (balanced) ≥ DINO | 0 | not paired (Welch) | — | not run |' in table
    assert '| SimDINO (untranslated) ≥ DINO | 3 | not paired (Welch) | +1.00 | inconclusive' \
        in table
    other = claims_table(runs, (('dino', 'dino_vmf'), ))
    assert '| DINO ≥ DINO-vMF | 3 | paired by seed | -1.00 ± 0.20 | lower (' in other


def test_pairing_families_match_the_initial_knn_of_the_committed_runs():
    # runs of one seed that start from the same weights have the same k-NN at epoch 0
    from small_scale_report import load_runs
    from small_scale_stats import paired_at_init
    runs = [r for r in load_runs(osp.join(ROOT, 'benchmarks', 'results', 'small_scale', 'study'))
            if r['run_spec']['seed'] == 0 and r.get('knn_curve')]
    init = {r['run_spec']['method']: r['knn_curve'][0][1] for r in runs
            if r['run_spec']['name'].endswith('_s0') and r['knn_curve'][0][0] == 0}
    if len(init) < 2:
        pytest.skip('fewer than two committed study runs with an initial k-NN')
    for a in init:
        for b in init:
            if a != b:
                assert (init[a] == init[b]) == paired_at_init(a, b), (a, b)


def test_two_drivers_never_claim_the_same_run(tmp_path):
    import subprocess
    work = str(tmp_path)
    assert small_scale.claim_run(work)  # free: taken, our pid written
    assert (tmp_path / 'driver.lock').read_text() == str(os.getpid())
    # a live driver (another process) holds it: not ours
    other = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(30)'])
    try:
        (tmp_path / 'driver.lock').write_text(str(other.pid))
        assert not small_scale.claim_run(work)
    finally:
        other.kill()
        other.wait()
    # that driver is gone (its pid no longer exists): the stale lock is taken over
    assert small_scale.claim_run(work)
    assert (tmp_path / 'driver.lock').read_text() == str(os.getpid())
    small_scale.release_run(work)
    assert not (tmp_path / 'driver.lock').exists()


def test_the_readme_table_is_rewritten_between_its_markers(tmp_path):
    from small_scale_report import README_END, README_START, readme_table, update_readme
    summary = {'dino': dict(method='dino', seeds=[0, 1], knn_top1=[79.0, 78.0],
                            linear_top1=[77.0, 77.0])}
    table = readme_table(summary, dict(knn_top1=84.5, linear_top1=83.5))
    # mean 78.5, sample std 0.71; 78.5 - 84.5 = -6.00
    assert '| DINO | 2 | 78.50 ± 0.71 | -6.00 | 77.00 ± 0.00 | -6.50 |' in table
    readme = tmp_path / 'README.md'
    readme.write_text(f'intro\n{README_START}\nold table\n{README_END}\nrest\n')
    assert update_readme(str(readme), table)
    text = readme.read_text()
    assert 'old table' not in text and text.startswith('intro\n') and text.endswith('rest\n')
    assert text.count('| DINO |') == 1
    unmarked = tmp_path / 'OTHER.md'
    unmarked.write_text('no markers\n')
    assert not update_readme(str(unmarked), table)
    assert unmarked.read_text() == 'no markers\n'
    # docs/benchmarks.md has its own pair of markers; the README's leave it alone
    from small_scale_report import DOCS_MARKERS
    docs = tmp_path / 'benchmarks.md'
    docs.write_text(f'a\n{DOCS_MARKERS[0]}\nold\n{DOCS_MARKERS[1]}\n{README_START}x{README_END}')
    assert update_readme(str(docs), 'new\n', DOCS_MARKERS)
    assert docs.read_text() == (f'a\n{DOCS_MARKERS[0]}\nnew\n{DOCS_MARKERS[1]}\n'
                                f'{README_START}x{README_END}')


def test_the_knn_figure_keeps_whole_epochs_only():
    from small_scale_report import epoch_points
    # a restarted session (init logged again at iteration 100 of 937) and a resumed one
    # (k-NN before training at iteration 1017)
    curve = [[0.0, 68.15], [100 / 937, 68.15], [1.0, 75.0], [1017 / 937, 76.2], [2.0, 77.0]]
    assert epoch_points(curve) == [[0.0, 68.15], [1.0, 75.0], [2.0, 77.0]]


@pytest.mark.slow
@pytest.mark.skipif(not osp.isdir(FASHION), reason='Debian dataset-fashion-mnist not installed')
def test_a_resumed_run_counts_only_its_own_iterations(tmp_path):
    args = ['--experiment', 'smoke', '--methods', 'simdino', '--out', str(tmp_path / 'out'),
            '--work-root', str(tmp_path / 'work'), '--in-process']
    assert small_scale.main(args + ['--epochs', '1']) == 0
    result = tmp_path / 'out' / 'smoke' / 'runs' / 'simdino_s0.json'
    first = json.loads(result.read_text())
    assert (first['iters'], first['iters_this_session']) == (4, 4)
    # a longer budget on the same work dir resumes from the epoch-1 checkpoint
    result.unlink()
    assert small_scale.main(args + ['--epochs', '2']) == 0
    second = json.loads(result.read_text())
    assert (second['iters'], second['iters_this_session']) == (8, 4)
    assert second['images_per_second'] == pytest.approx(
        4 * 64 / (second['train_seconds'] - first['train_seconds']
                  - (second['knn_hook_seconds'] - first['knn_hook_seconds'])), rel=0.05)
