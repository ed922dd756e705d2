"""tools/benchmarks/small_scale_fewlabel.py: label draws, scores on crafted features, and the
whole path on a smoke run's kept backbone (which must give the study's own k-NN back)."""
import json
import os.path as osp
import sys

import numpy as np
import pytest
import torch

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
sys.path.insert(0, osp.join(ROOT, 'tools', 'benchmarks'))
import small_scale_fewlabel as fewlabel  # noqa: E402

FASHION = '/usr/share/datasets/fashion-mnist'


def test_labelled_subsets_have_exactly_l_per_class_and_depend_on_the_draw():
    labels = np.repeat(np.arange(3), [5, 7, 9])
    a = fewlabel.labelled_subset(labels, 4, draw=0)
    assert np.bincount(labels[a]).tolist() == [4, 4, 4] and (np.diff(a) > 0).all()
    assert (a == fewlabel.labelled_subset(labels, 4, draw=0)).all()
    assert not (a == fewlabel.labelled_subset(labels, 4, draw=1)).all()
    with pytest.raises(ValueError, match='class 0 has 5 images in the bank; lower --labels'):
        fewlabel.labelled_subset(labels, 6, draw=0)


def test_scores_on_separable_and_on_uninformative_features():
    gen = torch.Generator().manual_seed(0)
    y = torch.arange(200) % 2
    # class c sits near +-(1, 1, 1, 1): every labelled subset separates the queries
    good = torch.randn(200, 4, generator=gen) * 0.1 + (2 * y - 1).unsqueeze(1)
    scores = fewlabel.few_label_scores((good[:100], y[:100]), (good[100:], y[100:]), [3, 10],
                                       draws=2)
    assert set(scores) == {'3', '10'}
    for s in scores.values():
        assert s['knn'] == [100.0, 100.0] and s['linear'] == [100.0, 100.0]
    # the same feature for every image: the k-NN vote ties and picks class 0 for all queries
    flat = torch.ones(200, 4)
    tie = fewlabel.few_label_scores((flat[:100], y[:100]), (flat[100:], y[100:]), [3], 1)
    assert tie['3']['knn'] == [50.0]


@pytest.mark.slow
@pytest.mark.skipif(not osp.isdir(FASHION), reason='Debian dataset-fashion-mnist not installed')
def test_few_labels_on_a_smoke_run_kept_backbone(tmp_path):
    import small_scale
    from small_scale_run import extract_teacher_features

    from mmselfsup_vmf.evaluation.knn import knn_accuracy
    assert small_scale.main(['--experiment', 'smoke', '--methods', 'simdino', '--out',
                             str(tmp_path / 'out'), '--work-root', str(tmp_path / 'work'),
                             '--in-process', '--readme', '']) == 0
    exp = tmp_path / 'out' / 'smoke'
    run = json.loads((exp / 'runs' / 'simdino_s0.json').read_text())
    # the kept backbone, reloaded into the run's config, gives the study's k-NN back
    model, cfg = fewlabel.run_model(run['run_spec'], str(exp / 'backbones' / 'simdino_s0.pth'))
    (train_f, train_y), (test_f, test_y) = extract_teacher_features(model, cfg)
    knn = knn_accuracy(train_f, train_y, test_f, test_y, 10, k=20, temperature=0.07)['top1']
    assert knn == pytest.approx(run['knn_top1'], abs=1e-6)
    out = tmp_path / 'fewlabel'
    assert fewlabel.main(['--experiment-dir', str(exp), '--out', str(out), '--labels', '10',
                          '--draws', '2']) == 0
    result = json.loads((out / 'simdino_s0.json').read_text())
    assert set(result['scores']) == {'SimDINO (untranslated)',
                                     'SimDINO (untranslated), random init'}
    pixels = json.loads((out / 'pixels.json').read_text())['scores']
    assert set(pixels) == {'raw pixels', 'PCA-64 pixels'}
    for scores in list(result['scores'].values()) + list(pixels.values()):
        assert len(scores['10']['knn']) == 2 and all(0 <= v <= 100 for v in scores['10']['knn'])
    table = (out / 'fewlabel.md').read_text().splitlines()
    assert table[0] == '| features | k-NN 10/class | linear 10/class |'
    assert table[2].startswith('| raw pixels |') and table[3].startswith('| PCA-64 pixels |')
