"""tools/install.sh: which Python it installs into (never the user's own, conda's ``base``
included) and its error for an interpreter it cannot use. Run on a copy of the script with
``MMSVMF_INSTALL_DRY_RUN=1``, which stops before ``pip install``."""
import os
import os.path as osp
import shutil
import subprocess
import sys

import pytest

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
pytestmark = pytest.mark.skipif(
    not osp.isdir('/usr/share/datasets/fashion-mnist'),
    reason='the script would apt-get the demo data first (Debian dataset-fashion-mnist)')


def run_install(tmp_path, **env):
    (tmp_path / 'tools').mkdir(exist_ok=True)
    shutil.copy(osp.join(ROOT, 'tools', 'install.sh'), tmp_path / 'tools' / 'install.sh')
    clean = {k: v for k, v in os.environ.items()
             if k not in ('VIRTUAL_ENV', 'CONDA_PREFIX', 'CONDA_DEFAULT_ENV', 'PYTHON')}
    clean.update(MMSVMF_INSTALL_DRY_RUN='1', **env)
    return subprocess.run(['bash', str(tmp_path / 'tools' / 'install.sh'), 'cpu'],
                          capture_output=True, text=True, env=clean, timeout=300)


def test_condas_base_gets_a_project_venv_not_the_install(tmp_path):
    out = run_install(tmp_path, CONDA_PREFIX='/opt/conda', CONDA_DEFAULT_ENV='base',
                      PYTHON=sys.executable)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == '.venv/bin/python'
    assert osp.isfile(tmp_path / '.venv' / 'pyvenv.cfg')
    assert 'using the active environment' not in out.stderr


def test_an_activated_conda_env_is_used(tmp_path):
    out = run_install(tmp_path, CONDA_PREFIX='/opt/conda/envs/ssl', CONDA_DEFAULT_ENV='ssl',
                      PATH=osp.dirname(sys.executable) + os.pathsep + os.environ['PATH'])
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == 'python'
    assert 'using the active environment /opt/conda/envs/ssl' in out.stderr
    assert not (tmp_path / '.venv').exists()


def test_an_unusable_interpreter_is_named_and_nothing_is_created(tmp_path):
    missing = str(tmp_path / 'no-such-python3.11')
    out = run_install(tmp_path, PYTHON=missing)
    assert out.returncode == 1
    assert 'Python >= 3.11 is needed' in out.stderr and missing in out.stderr
    assert 'not found' in out.stderr and 'PYTHON=' in out.stderr
    assert not (tmp_path / '.venv').exists() and out.stdout == ''
