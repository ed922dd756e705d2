"""Few-label evaluation of the study's kept teacher backbones, beside raw pixels, PCA-64 of the
pixels and the same networks at random initialisation.

For L labelled images per class (default L ∈ {10, 100}) and D draws (default 5; draw d picks
L images of every class from the k-NN bank with seed d), each feature set is scored on all
test queries by

- the weighted k-NN (k = min(20, 10·L), T = 0.07; ``mmselfsup_vmf/evaluation/knn.py``) with
  the L·C labelled images as the bank;
- the logistic probe (``mmselfsup_vmf/evaluation/logistic_probe.py``) trained on them.

Features: every kept backbone (``<experiment>/backbones/<run>.pth``, written by the study
driver) loaded into its run's config (``run_spec`` of ``<experiment>/runs/<run>.json``), its
teacher's CLS token as in the study; the same config at random initialisation (seed of the
run); raw pixels (one channel, L2-normalised for k-NN, standardised for the probe) and their
64-d PCA fitted on the whole bank (no labels). The data are the run's own k-NN sets, so a run
pre-trained on another dataset is evaluated on that dataset.

One file per run (``<out>/<run>.json``) plus ``<out>/pixels.json``; finished files are skipped.
``fewlabel.md`` holds the table (mean ± std over runs and draws).

Usage:
  python tools/benchmarks/small_scale_fewlabel.py [--experiment-dir DIR] [--out DIR]
      [--labels 10 100] [--draws 5] [--only RUN ...] [--no-random-init] [--report]
"""
import argparse
import glob
import json
import logging
import os
import os.path as osp
import statistics
import sys
import tempfile
import time
from typing import Dict, List, Sequence

sys.path.insert(0, osp.dirname(osp.abspath(__file__)))
from small_scale_report import METHOD_NAMES, group_name, mean_std  # noqa: E402
from small_scale_run import ROOT, write_json_atomic  # noqa: E402

STUDY = osp.join(ROOT, 'benchmarks', 'results', 'small_scale', 'study')
PCA_DIM = 64


def labelled_subset(labels, per_class: int, draw: int):
    """Sorted indices of ``per_class`` images of every class, chosen with seed ``draw``."""
    import numpy as np
    rng = np.random.default_rng(draw)
    chosen = []
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        if len(members) < per_class:
            raise ValueError(f'{per_class} labels per class requested but class {c} has '
                             f'{len(members)} images in the bank; lower --labels')
        chosen.append(rng.choice(members, per_class, replace=False))
    return np.sort(np.concatenate(chosen))


def few_label_scores(train, test, labels_per_class: Sequence[int], draws: int) -> Dict:
    """{L: {'knn': [top-1 per draw], 'linear': [...]}} of one feature set."""
    from mmselfsup_vmf.evaluation.knn import knn_accuracy
    from mmselfsup_vmf.evaluation.logistic_probe import logistic_probe_accuracy
    (train_f, train_y), (test_f, test_y) = train, test
    num_classes = int(max(train_y.max(), test_y.max())) + 1
    out = {}
    for per_class in labels_per_class:
        knn, linear = [], []
        for draw in range(draws):
            idx = labelled_subset(train_y.numpy(), per_class, draw)
            f, y = train_f[idx], train_y[idx]
            knn.append(knn_accuracy(f, y, test_f, test_y, num_classes,
                                    k=min(20, len(idx)), temperature=0.07)['top1'])
            linear.append(logistic_probe_accuracy(f.numpy(), y.numpy(), test_f.numpy(),
                                                  test_y.numpy())['top1'])
        out[str(per_class)] = dict(knn=knn, linear=linear)
    return out


def run_model(run_spec: dict, backbone: str = None):
    """(model, cfg) of a study run: its config and overrides, its seed's initialisation, the
    kept teacher backbone loaded when given."""
    from knn import load_weights
    from mmengine.logging import MMLogger
    from mmengine.registry import init_default_scope
    from mmengine.runner import set_random_seed
    from mmpretrain.registry import MODELS
    from small_scale_run import build_cfg

    import mmselfsup_vmf  # noqa: F401
    with tempfile.TemporaryDirectory() as work_dir:
        cfg = build_cfg(dict(run_spec, work_dir=work_dir))
    init_default_scope(cfg.get('default_scope', 'mmpretrain'))
    set_random_seed(int(run_spec['seed']))
    model = MODELS.build(cfg.model)
    logger = MMLogger.get_current_instance()
    level = logger.level
    logger.setLevel(logging.WARNING)  # mmengine logs one init line per parameter tensor
    try:
        model.init_weights()
    finally:
        logger.setLevel(level)
    model.sync_teacher()
    if backbone:
        load_weights(model, backbone)
    model.eval()
    return model, cfg


def pixel_sets(cfg):
    """((bank, labels), (queries, labels)) of one channel of the raw pixels."""
    from knn import knn_dataloader_cfgs
    from mmengine.runner import Runner

    from mmselfsup_vmf.evaluation.knn import extract_features, flat_input_pixels

    def first_channel(batch):
        pixels = flat_input_pixels(batch)
        return pixels[:, :pixels.shape[1] // 3]
    return tuple(extract_features(first_channel, Runner.build_dataloader(c, seed=0))
                 for c in knn_dataloader_cfgs(cfg))


def pca_sets(train, test, dim: int = PCA_DIM):
    import torch
    from sklearn.decomposition import PCA
    pca = PCA(dim, random_state=0).fit(train[0].numpy())
    return tuple((torch.from_numpy(pca.transform(f.numpy())).float(), y)
                 for f, y in (train, test))


def report(out_dir: str) -> str:
    """``fewlabel.md``: one row per feature set, mean ± std over its runs' draws."""
    rows: Dict[str, Dict[str, Dict[str, List[float]]]] = {}
    for path in sorted(glob.glob(osp.join(out_dir, '*.json'))):
        with open(path) as f:
            result = json.load(f)
        for name, scores in result['scores'].items():
            row = rows.setdefault(name, {})
            for per_class, s in scores.items():
                cell = row.setdefault(per_class, dict(knn=[], linear=[]))
                cell['knn'] += s['knn']
                cell['linear'] += s['linear']
    labels = sorted({int(k) for r in rows.values() for k in r})
    head = ['features'] + [f'{p} {n}/class' for n in labels for p in ('k-NN', 'linear')]
    lines = ['| ' + ' | '.join(head) + ' |', '|' + '---|' * len(head)]
    order = ['raw pixels', f'PCA-{PCA_DIM} pixels']
    for name in order + sorted(n for n in rows if n not in order):
        if name in rows:
            cells = [mean_std(rows[name][str(n)][p]) if str(n) in rows[name] else '—'
                     for n in labels for p in ('knn', 'linear')]
            lines.append(f'| {name} | ' + ' | '.join(cells) + ' |')
    path = osp.join(out_dir, 'fewlabel.md')
    with open(path, 'w') as f:
        f.write('\n'.join(lines) + '\n')
    return path


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--experiment-dir', default=STUDY,
                   help='a study experiment: runs/<run>.json and backbones/<run>.pth')
    p.add_argument('--out', help='default: <experiment-dir>/fewlabel')
    p.add_argument('--labels', type=int, nargs='+', default=[10, 100])
    p.add_argument('--draws', type=int, default=5)
    p.add_argument('--only', nargs='+', help='run names')
    p.add_argument('--no-random-init', action='store_true')
    p.add_argument('--report', action='store_true', help='only rewrite fewlabel.md')
    args = p.parse_args(argv)
    import torch
    torch.set_num_threads(1)
    out = args.out or osp.join(args.experiment_dir, 'fewlabel')
    os.makedirs(out, exist_ok=True)
    kept = sorted(glob.glob(osp.join(args.experiment_dir, 'backbones', '*.pth')))
    kept = [b for b in kept if not args.only or osp.basename(b)[:-4] in args.only]
    for backbone in kept if not args.report else []:
        name = osp.basename(backbone)[:-4]
        path = osp.join(out, name + '.json')
        if osp.isfile(path):
            continue
        start = time.time()
        with open(osp.join(args.experiment_dir, 'runs', name + '.json')) as f:
            run = json.load(f)
        model, cfg = run_model(run['run_spec'], backbone)
        from small_scale_run import extract_teacher_features
        label = METHOD_NAMES.get(run['run_spec']['method'], run['run_spec']['method'])
        scores = {label: few_label_scores(*extract_teacher_features(model, cfg), args.labels,
                                          args.draws)}
        if not args.no_random_init:
            model, cfg = run_model(run['run_spec'])
            scores[f'{label}, random init'] = few_label_scores(
                *extract_teacher_features(model, cfg), args.labels, args.draws)
        pixels = osp.join(out, 'pixels.json')
        if not osp.isfile(pixels):
            train, test = pixel_sets(cfg)
            write_json_atomic(pixels, dict(scores={
                'raw pixels': few_label_scores(train, test, args.labels, args.draws),
                f'PCA-{PCA_DIM} pixels': few_label_scores(*pca_sets(train, test),
                                                          args.labels, args.draws)},
                labels=args.labels, draws=args.draws))
        write_json_atomic(path, dict(run=name, group=group_name(run), scores=scores,
                                     labels=args.labels, draws=args.draws,
                                     wall_seconds=time.time() - start,
                                     loadavg_end=list(os.getloadavg())))
        print(f'{name}: ' + '; '.join(
            f'{k} {n}/class k-NN {statistics.mean(s[str(n)]["knn"]):.2f}'
            for k, s in scores.items() for n in args.labels), flush=True)
    print(f'wrote {report(out)}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
