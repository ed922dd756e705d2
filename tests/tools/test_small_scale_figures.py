"""The study figures drawn from the committed robustness results (20 runs, one seed each),
into a temporary folder: titles say what is plotted (no "mean over seeds" for single runs, no
Python repr), every line has its own colour / style, and the final k-NN uses dots, not bars
cut at 63 %. The figures are caught at ``savefig`` and inspected."""
import json
import os.path as osp
import sys

import pytest

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
sys.path.insert(0, osp.join(ROOT, 'tools', 'benchmarks'))
import small_scale_report as report  # noqa: E402

RESULTS = osp.join(ROOT, 'benchmarks', 'results', 'small_scale')


@pytest.fixture
def figures(monkeypatch):
    from matplotlib.figure import Figure
    saved = []
    original = Figure.savefig

    def keep(fig, *args, **kwargs):
        saved.append(fig)
        return original(fig, *args, **kwargs)

    monkeypatch.setattr(Figure, 'savefig', keep)
    return saved


def robustness():
    runs = report.load_runs(osp.join(RESULTS, 'robustness'))
    with open(osp.join(RESULTS, 'raw_pixels.json')) as f:
        raw = json.load(f)
    # the 17 runs of 2026-12-01 and SimDINO's three coding-rate (gamma) stress runs
    assert len(runs) == 20 and {r['run_spec']['seed'] for r in runs} == {0}
    return runs, raw


def styles_of(lines):
    return [(tuple(line.get_color()), line.get_linestyle()) for line in lines]


def test_knn_curves_of_single_runs(figures, tmp_path):
    runs, raw = robustness()
    report.plot_knn_curves(runs, raw, str(tmp_path / 'knn_vs_epoch.png'))
    ax = figures[-1].axes[0]
    title = ax.get_title()
    assert 'mean over' not in title and 'one run per line' in title
    assert '[(' not in title and '60,000 bank / 10,000 queries' in title
    curves = [line for line in ax.get_lines() if line.get_label() != 'raw pixels']
    assert len(curves) == 20 and len(set(styles_of(curves))) == 20


def test_knn_curves_say_mean_over_seeds_when_there_are_seeds(figures, tmp_path):
    runs = report.load_runs(osp.join(RESULTS, 'study'))
    with open(osp.join(RESULTS, 'raw_pixels.json')) as f:
        raw = json.load(f)
    seeds = len({r['run_spec']['seed'] for r in runs})
    assert seeds >= 2
    report.plot_knn_curves(runs, raw, str(tmp_path / 'knn_vs_epoch.png'))
    assert f'mean over {seeds} seeds' in figures[-1].axes[0].get_title()


def test_final_knn_is_a_dot_plot(figures, tmp_path):
    runs, raw = robustness()
    report.plot_final_knn(runs, raw, str(tmp_path / 'knn_final.png'))
    ax = figures[-1].axes[0]
    assert not ax.patches  # no bars whose length would start at the axis' cut
    signs = [report.collapse_signs(r) for r in runs]
    for collection, learns in zip(ax.collections[:2], (True, False)):
        finals = sorted(c['knn_final'] for c in signs if (c['verdict'] == 'learns') == learns)
        assert sorted(collection.get_offsets()[:, 0]) == pytest.approx(finals)
    assert '[(' not in ax.get_xlabel() and '60,000 bank / 10,000 queries' in ax.get_xlabel()


def test_prototype_usage_lines_are_distinct(figures, tmp_path):
    runs, _ = robustness()
    report.plot_prototype_usage(runs, str(tmp_path / 'prototype_usage.png'))
    lines = figures[-1].axes[0].get_lines()
    assert len(lines) == sum(bool(r.get('prototype_usage')) for r in runs)
    assert len(set(styles_of(lines))) == len(lines)
