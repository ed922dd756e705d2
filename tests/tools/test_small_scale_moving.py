"""tools/benchmarks/small_scale.py --experiment moving: the canvas runs (overrides, budget,
crops), its table's statistics, and the smoke run end to end with the few-label tool on its
kept backbone."""
import json
import math
import os.path as osp
import sys

import numpy as np
import pytest
import torch

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
sys.path.insert(0, osp.join(ROOT, 'tools', 'benchmarks'))
import small_scale  # noqa: E402
import small_scale_moving as moving  # noqa: E402

FASHION = '/usr/share/datasets/fashion-mnist'
MASKED = ('ibot', 'ibot_vmf', 'simdinov2_balanced')  # their mask generators need the patch


def test_moving_runs_are_six_methods_times_three_seeds_on_the_canvas():
    args = small_scale.parse_args(['--experiment', 'moving'])
    runs = small_scale.moving_runs(args)
    assert sorted({r['method'] for r in runs}) == sorted(
        ['dino', 'dino_vmf', 'ibot', 'ibot_vmf', 'simdino_balanced', 'simdinov2_balanced'])
    assert len({r['name'] for r in runs}) == len(runs) == 18
    for r in runs:
        o = r['overrides']
        assert r['epochs'] == 1 and r['knn_hook'] is False and r['init_eval'] == (r['seed'] == 0)
        # each method's study recipe: its sweep's best lr / momentum
        for key, value in small_scale.tuned_overrides(args.out, r['method']).items():
            assert o[key] == value
        train = o['train_dataloader.dataset.dataset']
        assert (train['type'], train['canvas'], train['num_samples'], train['seed']) == (
            'FashionMNISTOffsets', 40, 30000, 0)
        for key, split in (('knn_train_dataloader.dataset', 'train'),
                           ('knn_val_dataloader.dataset', 'test')):
            assert (o[key]['split'], o[key]['canvas'], o[key]['num_samples']) == (split, 40, None)
        # 40 px canvas at evaluation in 8 px patches; crops keep the study's token grids
        assert (o['model.backbone.img_size'], o['model.backbone.patch_size']) == (40, 8)
        crop = next(t for t in train['pipeline'] if t['type'] == 'MultiCrop')
        assert (crop['global_size'] // 8, crop['local_size'] // 8) == (4, 2)
        assert (o.get('model.data_preprocessor.patch_size') == 8) == (r['method'] in MASKED)
    # the study's other augmentation settings are untouched
    from mmengine.config import Config
    study = Config.fromfile(osp.join(ROOT, 'configs/benchmarks/small_scale/dino.py'))
    study_crop = study.train_dataloader.dataset.dataset.pipeline[0]
    crop = runs[0]['overrides']['train_dataloader.dataset.dataset']['pipeline'][0]
    assert {k: v for k, v in crop.items() if not k.endswith('_size')} == {
        k: v for k, v in study_crop.items() if not k.endswith('_size')}
    # the untranslated SimDINO recipes on request
    extra = small_scale.parse_args(['--experiment', 'moving', '--methods', 'simdino',
                                    'simdinov2', '--seeds', '1'])
    assert [r['name'] for r in small_scale.moving_runs(extra)] == ['simdino_s0', 'simdinov2_s0']


def test_global_crops_usually_hold_most_of_the_garment():
    # the 28 px garment at a uniform offset in [0, 12]^2, a global crop drawn with MultiCrop's
    # sampler at the configured scale: the fraction of the garment's square inside the crop
    from mmselfsup_vmf.models.utils.multicrop_params import resized_crop_boxes
    crop = moving.canvas_overrides('dino')['train_dataloader.dataset.dataset']['pipeline'][0]
    rng = np.random.default_rng(0)
    n = 4000
    gy, gx = rng.integers(0, moving.CANVAS - 28 + 1, size=(2, n))
    top, left, h, w = resized_crop_boxes(rng, moving.CANVAS, moving.CANVAS,
                                         np.array([crop['global_scale']] * n)).T
    rows = np.clip(np.minimum(top + h, gy + 28) - np.maximum(top, gy), 0, None)
    cols = np.clip(np.minimum(left + w, gx + 28) - np.maximum(left, gx), 0, None)
    inside = rows * cols / 28 ** 2
    assert inside.mean() > 0.8 and (inside >= 0.5).mean() > 0.95


@pytest.mark.skipif(not osp.isdir(FASHION), reason='Debian dataset-fashion-mnist not installed')
def test_crop_coverage_of_the_garments_ink():
    # a crop of the whole image keeps all of every garment, on the canvas or not
    for canvas in (28, 40):
        whole = moving.crop_coverage((1.0, 1.0), canvas, num_images=50)
        assert (whole['mean'], whole['at_least_80'], whole['under_tenth']) == (1.0, 1.0, 0.0)
    crop = moving.canvas_overrides('dino')['train_dataloader.dataset.dataset']['pipeline'][0]
    global_crops = moving.crop_coverage(crop['global_scale'], num_images=500)
    assert global_crops['mean'] > 0.8 and global_crops['at_least_half'] > 0.95


def test_mean_interval_against_the_closed_form_at_two_dof():
    from small_scale_stats import mean_interval
    # 1, 2, 3: sd 1; t_0.975,2 = sqrt(2 a^2 / (1 - a^2)), a = 0.95 (closed-form t_2 CDF)
    r = mean_interval([1.0, 2.0, 3.0])
    q = math.sqrt(2 * 0.95 ** 2 / (1 - 0.95 ** 2))
    assert (r['mean'], r['n']) == (2.0, 3) and r['half'] == pytest.approx(q / math.sqrt(3))


def test_moving_table_scores_each_method_against_raw_pixels():
    def run(method, seed, knn, linear, init=None):
        return dict(run_spec=dict(name=f'{method}_s{seed}', method=method, seed=seed,
                                  overrides={}, epochs=1),
                    knn_top1=knn, linear_top1=linear, wall_seconds=60.0,
                    images_per_second=100.0, loadavg_end=[1.0], finished='x', init=init)
    pixels = {'raw pixels': dict(knn_top1=70.0, linear_top1=60.0, feature_dim=1600),
              'PCA-64 pixels': dict(knn_top1=72.0, linear_top1=50.0, feature_dim=64)}
    runs = [run('dino', 0, 71.0, 59.0, dict(knn_top1=55.0, linear_top1=45.5)),
            run('dino', 1, 72.0, 61.0), run('dino', 2, 73.0, 60.0)]
    table = moving.moving_table(runs, pixels)
    assert '| raw pixels (1600-d) | — | 70.00 | | | 60.00 |' in table
    assert '| PCA-64 pixels (64-d) | — | 72.00 | | | 50.00 |' in table
    # k-NN 71, 72, 73: mean 72 ± 4.3027 / sqrt(3) = 2.48; differences to pixels 1, 2, 3 give
    # the interval [2 - 2.48, 2 + 2.48]: inconclusive; linear -1, +1, 0 likewise
    row = next(line for line in table.splitlines() if line.startswith('| DINO |'))
    assert row.startswith('| DINO | 3 | 72.00 ± 2.48 | +2.00 | inconclusive (95 % CI '
                          '[-0.48, +4.48], p = 0.07')
    assert '| 60.00 ± 2.48 | +0.00 | inconclusive (' in row
    assert row.endswith('| 55.00 | 45.50 |')
    # 1, 1.2, 0.8 points above pixels: the interval [0.50, 1.50] excludes 0
    tight = [run('dino', s, 70.0 + d, 60.0) for s, d in enumerate((1.0, 1.2, 0.8))]
    assert 'higher (95 % CI [+0.50, +1.50]' in moving.moving_table(tight, pixels)


@pytest.mark.slow
@pytest.mark.skipif(not osp.isdir(FASHION), reason='Debian dataset-fashion-mnist not installed')
def test_moving_smoke_then_few_labels_on_its_kept_backbone(tmp_path):
    import small_scale_fewlabel as fewlabel
    from small_scale_run import extract_teacher_features

    from mmselfsup_vmf.datasets import FashionMNISTOffsets
    from mmselfsup_vmf.evaluation.knn import knn_accuracy
    args = ['--experiment', 'moving_smoke', '--methods', 'ibot', '--out',
            str(tmp_path / 'out'), '--work-root', str(tmp_path / 'work'), '--in-process']
    assert small_scale.main(args) == 0
    exp = tmp_path / 'out' / 'moving_smoke'
    run = json.loads((exp / 'runs' / 'ibot_s0.json').read_text())
    assert (run['num_bank'], run['num_queries'], run['iters']) == (1000, 500, 4)
    assert set(run['init']) >= {'knn_top1', 'linear_top1', 'seconds'}
    # the pixel rows are the canvas's: one channel of 40 x 40, k-NN re-derived here in
    # float64 (cosine, k = 20, weights exp(s / 0.07)) on the same canvas images
    pixels = json.loads((exp / 'pixels.json').read_text())
    assert (pixels['raw pixels']['feature_dim'], pixels['PCA-64 pixels']['feature_dim']) == (
        1600, 64)
    sets = [FashionMNISTOffsets(split=split, num_samples=n, canvas=40, serialize_data=False)
            for split, n in (('train', 1000), ('test', 500))]
    (xb, yb), (xq, yq) = [(np.stack([d.get_data_info(i)['img'][..., 0].ravel()
                                     for i in range(len(d))]).astype(np.float64),
                           np.array([d.get_data_info(i)['gt_label'] for i in range(len(d))]))
                          for d in sets]
    xb, xq = (x / np.linalg.norm(x, axis=1, keepdims=True) for x in (xb, xq))
    sims = xq @ xb.T
    top = np.argsort(-sims, axis=1)[:, :20]
    votes = np.zeros((len(xq), 10))
    for i in range(len(xq)):
        np.add.at(votes[i], yb[top[i]], np.exp(sims[i, top[i]] / 0.07))
    assert pixels['raw pixels']['knn_top1'] == pytest.approx(
        100 * np.mean(votes.argmax(1) == yq), abs=1e-6)
    table = (exp / 'results.md').read_text()
    assert '| raw pixels (1600-d) |' in table and '| iBOT | 1 |' in table
    # the kept teacher backbone, rebuilt from the run's own settings (canvas overrides through
    # JSON), gives the run's k-NN back; then the few-label tool runs on the experiment
    model, cfg = fewlabel.run_model(run['run_spec'], str(exp / 'backbones' / 'ibot_s0.pth'))
    assert cfg.model.backbone.img_size == 40
    (train_f, train_y), (test_f, test_y) = extract_teacher_features(model, cfg)
    knn = knn_accuracy(train_f, train_y, test_f, test_y, 10, k=20, temperature=0.07)['top1']
    assert knn == pytest.approx(run['knn_top1'], abs=1e-6)
    saved = torch.load(exp / 'backbones' / 'ibot_s0.pth', weights_only=True)
    assert saved['state_dict']['pos_embed'].shape[1] == 1 + 5 * 5
    out = tmp_path / 'fewlabel'
    assert fewlabel.main(['--experiment-dir', str(exp), '--out', str(out), '--labels', '10',
                          '--draws', '1', '--no-random-init']) == 0
    scores = json.loads((out / 'ibot_s0.json').read_text())['scores']
    assert len(scores['iBOT']['10']['knn']) == 1
    few_pixels = json.loads((out / 'pixels.json').read_text())['scores']
    assert set(few_pixels) == {'raw pixels', 'PCA-64 pixels'}
