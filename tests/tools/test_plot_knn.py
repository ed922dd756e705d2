"""tools/analysis/plot_knn.py on mmengine-style JSON scalar logs written here."""
import json
import os.path as osp
import subprocess
import sys

import cv2
import pytest
from testing_utils import load_tool as _load_tool  # noqa: E402

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
TOOL = osp.join(ROOT, 'tools', 'analysis', 'plot_knn.py')


def load_tool():
    return _load_tool(TOOL)


tool = load_tool()


def write_log(path, records):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(''.join(json.dumps(r) + '\n' for r in records))
    return path


def run_records():
    """2 epochs of 10 iterations, logging every 5, k-NN before training and per epoch
    (step = iterations done), plus an mmengine validation line whose step is the epoch."""
    records = [{'knn/top1': 10.0, 'knn/top5': 50.0, 'step': 0}]
    for it in (5, 10, 15, 20):
        records.append({'lr': 0.1, 'loss': 8.0 - it / 10, 'loss_dino': 7.0 - it / 10,
                        'loss_ibot': 1.0, 'time': 0.5, 'epoch': 1 + (it - 1) // 10,
                        'iter': it, 'step': it})
        if it % 10 == 0:
            records.append({'knn/top1': 10.0 + it, 'knn/top5': 50.0 + it, 'step': it})
    records.append({'accuracy/top1': 33.0, 'step': 2})  # ValLoop line, step in epochs
    return records


def test_series_and_png(tmp_path):
    log = write_log(tmp_path / 'work' / '20250101_000000' / 'vis_data' / 'scalars.json',
                    run_records())
    series, out = tool.plot_knn(str(log), str(tmp_path / 'curve.png'))
    assert series['knn']['knn/top1'] == [(0, 10.0), (10, 20.0), (20, 30.0)]
    assert series['knn']['knn/top5'][-1] == (20, 70.0)
    assert series['loss']['loss'] == [(5, 7.5), (10, 7.0), (15, 6.5), (20, 6.0)]
    assert series['loss']['loss_dino'][0] == (5, 6.5)
    assert set(series['loss']) == {'loss', 'loss_dino', 'loss_ibot'}  # lr/time ignored
    img = cv2.imread(out)
    assert img is not None and img.shape == (700, 800, 3)  # 8x7 inches at 100 dpi


def test_val_line_with_epoch_step(tmp_path):
    log = write_log(tmp_path / 'a.json', [
        {'loss': 1.0, 'iter': 40, 'step': 40},
        {'knn/top1': 55.0, 'step': 2},  # mmengine's by-epoch validation step
    ])
    series = tool.read_scalars([str(log)])
    assert series['knn']['knn/top1'] == [(40, 55.0)]


def test_work_dir_joins_resumed_runs_in_time_order(tmp_path):
    first = run_records()[:4]
    second = [{'loss': 5.0, 'iter': 25, 'step': 25}, {'knn/top1': 40.0, 'step': 30}]
    write_log(tmp_path / '20250101_000000' / 'vis_data' / 'scalars.json', first)
    write_log(tmp_path / '20250101_000000' / 'vis_data' / '20250101_000000.json', first)
    write_log(tmp_path / '20250102_000000' / 'vis_data' / '20250102_000000.json', second)
    series, out = tool.plot_knn(str(tmp_path))
    assert out == osp.join(str(tmp_path), 'knn_and_losses.png') and osp.isfile(out)
    assert series['knn']['knn/top1'] == [(0, 10.0), (10, 20.0), (30, 40.0)]
    assert [x for x, _ in series['loss']['loss']] == [5, 10, 25]  # no duplicated first run


def test_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match='no such file'):
        tool.plot_knn(str(tmp_path / 'missing'))
    with pytest.raises(FileNotFoundError, match='no vis_data'):
        tool.plot_knn(str(tmp_path))
    bad = tmp_path / 'bad.json'
    bad.write_text('{"loss": 1}\nnot json\n')
    with pytest.raises(ValueError, match='bad.json:2'):
        tool.plot_knn(str(bad))
    empty = write_log(tmp_path / 'e.json', [{'lr': 0.1, 'iter': 1}])
    with pytest.raises(ValueError, match='no k-NN'):
        tool.plot_knn(str(empty))


def test_cli(tmp_path, capsys):
    log = write_log(tmp_path / 'vis_data' / 'scalars.json', run_records())
    out = tmp_path / 'p.png'
    run = subprocess.run([sys.executable, TOOL, str(log), '--out', str(out)],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert out.is_file() and 'knn/top1: last 30.00 at iter 20, best 30.00' in run.stdout
    assert tool.main([str(tmp_path / 'nope')]) == 1
    assert capsys.readouterr().err.startswith('error: no such file')
