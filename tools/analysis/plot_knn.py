"""Plot k-NN accuracy and the loss terms over training from mmengine's JSON scalar logs.

mmengine's ``LocalVisBackend`` writes ``<work_dir>/<timestamp>/vis_data/scalars.json`` (and
``<timestamp>.json``): one JSON dict per line. Training lines carry ``iter`` and the losses
(``loss``, ``loss_dino``, ``loss_patch``, ``loss_comp``, ``loss_expa`` ...); the k-NN hook
writes ``knn/top1``-style keys with ``step`` = iterations done.

x axis = training iteration. A line without ``iter`` (k-NN or validation) is placed at its
``step``, unless that is smaller than the last training iteration seen before it (then the
step counts epochs, as mmengine's validation lines do) and it goes there instead.

Usage: python tools/analysis/plot_knn.py WORK_DIR_OR_JSON [--out PNG]
With a work dir, every run folder's log is read in time order (resumed runs join up).
"""
import argparse
import glob
import json
import os.path as osp
import sys
from typing import Dict, List, Optional, Tuple

Series = Dict[str, List[Tuple[float, float]]]


def find_logs(path: str) -> List[str]:
    """A JSON file itself, or the scalar logs under a work dir (one per run, oldest first)."""
    if osp.isfile(path):
        return [path]
    if not osp.isdir(path):
        raise FileNotFoundError(f'no such file or work dir: {path}')
    logs = []
    for vis_dir in sorted(glob.glob(osp.join(path, '**', 'vis_data'), recursive=True)):
        scalars = osp.join(vis_dir, 'scalars.json')
        if osp.isfile(scalars):
            logs.append(scalars)
        else:  # only the LoggerHook's <timestamp>.json
            logs.extend(sorted(glob.glob(osp.join(vis_dir, '*.json'))))
    if not logs:
        raise FileNotFoundError(f'no vis_data/*.json scalar log under {path}')
    return logs


def is_knn_key(key: str) -> bool:
    return 'knn' in key.lower()


def is_loss_key(key: str) -> bool:
    return key == 'loss' or key.startswith('loss_') or key.startswith('loss/')


def read_scalars(paths: List[str]) -> Dict[str, Series]:
    """{'knn': {name: [(iter, value)]}, 'loss': {...}} from the JSON lines of ``paths``."""
    out: Dict[str, Series] = {'knn': {}, 'loss': {}}
    last_train_iter: Optional[float] = None
    for path in paths:
        with open(path) as f:
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as e:
                    raise ValueError(f'{path}:{lineno}: not a JSON line ({e.msg})') from e
                if not isinstance(record, dict):
                    raise ValueError(f'{path}:{lineno}: expected a JSON object per line')
                if 'iter' in record:
                    x = float(record['iter'])
                    last_train_iter = x
                else:
                    x = float(record.get('step', 0))
                    if last_train_iter is not None and x < last_train_iter:
                        x = last_train_iter
                for key, value in record.items():
                    if not isinstance(value, (int, float)) or isinstance(value, bool):
                        continue
                    group = 'knn' if is_knn_key(key) else 'loss' if is_loss_key(key) else None
                    if group is not None:
                        out[group].setdefault(key, []).append((x, float(value)))
    return out


def plot_scalars(series: Dict[str, Series], out: str, title: str = '') -> str:
    """Two panels (k-NN accuracy, losses) as a 8x7 inch, 100 dpi PNG."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    fig, (ax_knn, ax_loss) = plt.subplots(2, 1, figsize=(8, 7), dpi=100, sharex=True)
    for ax, group, ylabel in ((ax_knn, 'knn', 'k-NN accuracy (%)'),
                              (ax_loss, 'loss', 'loss')):
        for name, points in sorted(series[group].items()):
            xs, ys = zip(*points)
            ax.plot(xs, ys, marker='o' if group == 'knn' else None, markersize=3, label=name)
        if series[group]:
            ax.legend(fontsize=8)
        else:
            ax.text(0.5, 0.5, f'no {group} values in the log', ha='center', va='center',
                    transform=ax.transAxes)
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
    ax_loss.set_xlabel('iteration')
    if title:
        ax_knn.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)
    return out


def plot_knn(path: str, out: Optional[str] = None) -> Tuple[Dict[str, Series], str]:
    """Read the logs at ``path`` and write the PNG; returns (series, png path)."""
    logs = find_logs(path)
    series = read_scalars(logs)
    if not series['knn'] and not series['loss']:
        raise ValueError(f'{path}: no k-NN (knn*) or loss (loss*) scalars in {logs}')
    if out is None:
        base = path if osp.isdir(path) else osp.dirname(osp.abspath(path))
        out = osp.join(base, 'knn_and_losses.png')
    run = osp.abspath(path)
    if osp.isfile(run):  # <work_dir>/<timestamp>/vis_data/scalars.json -> <timestamp>
        parent = osp.dirname(run)
        run = osp.dirname(parent) if osp.basename(parent) == 'vis_data' else run
    return series, plot_scalars(series, out, title=osp.basename(run))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        description="Plot k-NN accuracy and loss terms over training from mmengine's "
        'vis_data/*.json scalar logs.')
    parser.add_argument('path', help='work dir (searched for vis_data/) or one JSON log')
    parser.add_argument('--out', default=None,
                        help='output PNG (default: knn_and_losses.png next to the log)')
    args = parser.parse_args(argv)
    try:
        series, out = plot_knn(args.path, args.out)
    except (FileNotFoundError, ValueError) as e:
        print(f'error: {e}', file=sys.stderr)
        return 1
    for name, points in sorted(series['knn'].items()):
        print(f'{name}: last {points[-1][1]:.2f} at iter {points[-1][0]:g}, '
              f'best {max(p[1] for p in points):.2f}')
    print(f'wrote {out}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
