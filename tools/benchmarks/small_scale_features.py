"""Which teacher features does the study's verdict depend on? Re-evaluate finished study runs
with DINO's linear-evaluation features (docs/benchmarks.md, "Feature choice").

The study scores the final-block CLS token. DINO's ``eval_linear.py`` feeds its classifier
other features of the same frozen backbone (``mmselfsup_vmf/evaluation/linear_probe.py``):

    cls       LN(z_L)_cls                                  the study's protocol (dim C)
    cls4      [LN(z_{L-3})_cls, ..., LN(z_L)_cls]          DINO's ViT-S/16 protocol (dim 4C)
    cls_avg   [LN(z_L)_cls, mean_p LN(z_L)_p]              DINO's ViT-B/16 protocol (dim 2C)

where z_l are the tokens after block l, LN the backbone's final norm and p the patch tokens
(registers excluded). Each finished run's last checkpoint is loaded into its own dumped config
(``<work-root>/<run>/<method>.py``) and every feature is scored with the study's k-NN and
logistic probe on the full split. One file per run (``<out>/<run>.json``); finished runs are
skipped and two processes share the list through the study driver's per-run lock.

Usage:
  python tools/benchmarks/small_scale_features.py [--runs-dir R] [--work-root W] [--out O]
      [--only NAME ...] [--report]
"""
import argparse
import glob
import json
import os
import os.path as osp
import sys
import time
from typing import Dict, List

sys.path.insert(0, osp.dirname(osp.abspath(__file__)))
from small_scale import claim_run, release_run  # noqa: E402
from small_scale_report import METHOD_NAMES, claims_table, mean_std  # noqa: E402
from small_scale_run import ROOT, evaluate_features, write_json_atomic  # noqa: E402

FEATURES = ('cls', 'cls4', 'cls_avg')
STUDY = osp.join(ROOT, 'benchmarks', 'results', 'small_scale', 'study')


def block_features(model, data_batch: dict, n_last_blocks: int = 4) -> Dict[str, object]:
    """{feature name: (B, D)} of the teacher backbone, from the tokens after its last
    ``n_last_blocks`` blocks (all blocks when it has fewer; captured by forward hooks and
    normalised by the final norm, as DINO's ``get_intermediate_layers``)."""
    import torch
    backbone = model.teacher.module['backbone']
    n_last_blocks = min(n_last_blocks, len(backbone.layers))
    tokens = []
    handles = [layer.register_forward_hook(lambda m, i, out: tokens.append(out))
               for layer in backbone.layers[-n_last_blocks:]]
    try:
        with torch.no_grad():
            model.knn_features(data_batch, 'teacher')
    finally:
        for handle in handles:
            handle.remove()
    normed = [backbone.ln1(t) for t in tokens]
    cls = [t[:, 0] for t in normed]
    patches = normed[-1][:, backbone.num_extra_tokens:]
    return dict(cls=cls[-1], cls4=torch.cat(cls, dim=-1),
                cls_avg=torch.cat([cls[-1], patches.mean(dim=1)], dim=-1))


def evaluate_run(run: dict, work_dir: str) -> dict:
    """Scores of every feature in ``FEATURES`` for the last checkpoint of the run ``run``
    (the ``run_spec`` of its result file) in ``work_dir``."""
    import torch
    from knn import build_model, knn_dataloader_cfgs, load_weights
    from mmengine.runner import Runner

    from mmselfsup_vmf.evaluation.knn import extract_features
    with open(osp.join(work_dir, 'last_checkpoint')) as f:
        checkpoint = f.read().strip()
    checkpoint = osp.join(work_dir, osp.basename(checkpoint))  # the dir may have moved
    model, cfg = build_model(osp.join(work_dir, osp.basename(run['config'])))
    load_weights(model, checkpoint)
    dims = [0]
    sets = []
    for loader_cfg in knn_dataloader_cfgs(cfg):
        def concat(batch):
            feats = block_features(model, batch)
            dims[1:] = [f.shape[1] for f in feats.values()]
            return torch.cat([feats[k] for k in FEATURES], dim=-1)
        sets.append(extract_features(concat, Runner.build_dataloader(loader_cfg, seed=0)))
    (train_f, train_y), (test_f, test_y) = sets
    bounds = torch.tensor(dims).cumsum(0).tolist()
    out = dict(run=run['name'], method=run['method'], seed=run['seed'],
               checkpoint=osp.relpath(checkpoint, work_dir), features={})
    for name, lo, hi in zip(FEATURES, bounds, bounds[1:]):
        out['features'][name] = evaluate_features((train_f[:, lo:hi], train_y),
                                                  (test_f[:, lo:hi], test_y))
    return out


def features_table(results: List[dict], raw: dict) -> str:
    """Per method (mean ± std over seeds): k-NN and probe top-1 for each feature."""
    head = ['method', 'seeds'] + [f'{p} {f}' for p in ('k-NN', 'linear') for f in FEATURES]
    lines = ['| ' + ' | '.join(head) + ' |', '|' + '---|' * len(head)]
    lines.append('| raw pixels | — | ' + ' | '.join(
        [f'{raw["knn_top1"]:.2f}'] * len(FEATURES) + [f'{raw["linear_top1"]:.2f}'] *
        len(FEATURES)) + ' |')
    by_method: Dict[str, List[dict]] = {}
    for r in results:
        by_method.setdefault(r['method'], []).append(r)
    for method in sorted(by_method, key=list(METHOD_NAMES).index):
        rows = by_method[method]
        cells = [mean_std([r['features'][f][key] for r in rows])
                 for key in ('knn_top1', 'linear_top1') for f in FEATURES]
        lines.append(f'| {METHOD_NAMES[method]} | {len(rows)} | ' + ' | '.join(cells) + ' |')
    return '\n'.join(lines) + '\n'


def feature_claims(results: List[dict], feature: str) -> str:
    """The study's claims table (its rule: small_scale_stats) scored with ``feature``."""
    runs = [dict(run_spec=dict(name=r['run'], method=r['method'], seed=r['seed']),
                 **r['features'][feature]) for r in results]
    return claims_table(runs)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--runs-dir', default=osp.join(STUDY, 'runs'),
                   help='finished study runs (<run>.json); their checkpoints are re-scored')
    p.add_argument('--work-root', default=osp.join(ROOT, 'work_dirs', 'small_scale', 'study'))
    p.add_argument('--out', default=osp.join(STUDY, 'features'))
    p.add_argument('--raw', default=osp.join(osp.dirname(STUDY), 'raw_pixels.json'),
                   help="the study driver's raw-pixel result (the table's baseline row)")
    p.add_argument('--only', nargs='+', help='run names')
    p.add_argument('--report', action='store_true', help='only rewrite features.md')
    args = p.parse_args(argv)
    import torch
    torch.set_num_threads(1)
    names = sorted(osp.basename(f)[:-5] for f in glob.glob(osp.join(args.runs_dir, '*.json')))
    names = [n for n in names if not args.only or n in args.only]
    os.makedirs(args.out, exist_ok=True)
    for name in names if not args.report else []:
        path, work_dir = osp.join(args.out, name + '.json'), osp.join(args.work_root, name)
        if osp.isfile(path):
            continue
        if not osp.isfile(osp.join(work_dir, 'last_checkpoint')):
            print(f'{name}: no checkpoint in {work_dir}, skipped', flush=True)
            continue
        if not claim_run(work_dir):
            print(f'{name}: locked by another process, skipped', flush=True)
            continue
        try:
            start = time.time()
            with open(osp.join(args.runs_dir, name + '.json')) as f:
                run = json.load(f)['run_spec']
            result = evaluate_run(run, work_dir)
            result.update(wall_seconds=time.time() - start, loadavg_end=list(os.getloadavg()))
            write_json_atomic(path, result)
        finally:
            release_run(work_dir)
        print(f'{name}: ' + '  '.join(
            f'{f} {s["knn_top1"]:.2f}/{s["linear_top1"]:.2f}'
            for f, s in result['features'].items()) + f'  ({time.time() - start:.0f} s)',
            flush=True)
    results = []
    for path in sorted(glob.glob(osp.join(args.out, '*.json'))):
        with open(path) as f:
            results.append(json.load(f))
    with open(args.raw) as f:
        raw = json.load(f)
    table = osp.join(args.out, 'features.md')
    with open(table, 'w') as f:
        f.write(features_table(results, raw))
        for feature in FEATURES[1:]:
            f.write(f'\nThe papers\' claims with the {feature} feature (the study\'s rule: '
                    '95 % t-intervals, paired by seed within a family):\n\n'
                    + feature_claims(results, feature))
    print(f'wrote {table} ({len(results)} runs)')
    return 0


if __name__ == '__main__':
    sys.exit(main())
