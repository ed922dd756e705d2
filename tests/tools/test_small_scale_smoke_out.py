"""``tools/benchmarks/small_scale.py --experiment smoke`` as documented used to leave
untracked files in the committed benchmarks/results/small_scale; its default results folder
is now under work_dirs/ (git-ignored); the other experiments keep the committed one."""
import os.path as osp
import subprocess
import sys

import pytest

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
sys.path.insert(0, osp.join(ROOT, 'tools', 'benchmarks'))
import small_scale  # noqa: E402


def test_smoke_writes_outside_the_committed_results_by_default():
    smoke = small_scale.parse_args(['--experiment', 'smoke']).out
    assert smoke == osp.join(ROOT, 'work_dirs', 'small_scale_smoke')
    ignored = subprocess.run(['git', 'check-ignore', '-q', osp.join(smoke, 'smoke', 'x.json')],
                             cwd=ROOT, capture_output=True)
    if ignored.returncode == 128:
        pytest.skip('not a git checkout: cannot ask git what it ignores')
    assert ignored.returncode == 0  # git ignores what the smoke writes
    assert small_scale.parse_args(['--experiment', 'moving_smoke']).out == smoke
    for experiment in ('study', 'sweep', 'robustness', 'moving'):
        assert small_scale.parse_args(['--experiment', experiment]).out == osp.join(
            ROOT, 'benchmarks', 'results', 'small_scale')
