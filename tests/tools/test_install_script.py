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
    assert '[install] environment: .venv/bin/python' in out.stderr


def test_an_activated_conda_env_is_used(tmp_path):
    out = run_install(tmp_path, CONDA_PREFIX='/opt/conda/envs/ssl', CONDA_DEFAULT_ENV='ssl',
                      PATH=osp.dirname(sys.executable) + os.pathsep + os.environ['PATH'])
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == 'python'
    assert 'using the active environment /opt/conda/envs/ssl' in out.stderr
    python = shutil.which('python', path=osp.dirname(sys.executable))
    assert f'[install] environment: {python} ' in out.stderr
    assert not (tmp_path / '.venv').exists()


def test_an_unusable_interpreter_is_named_and_nothing_is_created(tmp_path):
    missing = str(tmp_path / 'no-such-python3.11')
    out = run_install(tmp_path, PYTHON=missing)
    assert out.returncode == 1
    assert 'Python >= 3.11 is needed' in out.stderr and missing in out.stderr
    assert 'not found' in out.stderr and 'PYTHON=' in out.stderr
    assert not (tmp_path / '.venv').exists() and out.stdout == ''


def test_demo_sh_shows_the_environment_and_installs_the_tools_extra(tmp_path):
    """README command 1 captures install.sh's stdout (the interpreter): the user still sees
    the environment on stderr, and the extras include ``tools`` (what the tools import)."""
    (tmp_path / 'tools').mkdir()
    shutil.copy(osp.join(ROOT, 'tools', 'demo.sh'), tmp_path / 'tools' / 'demo.sh')
    (tmp_path / 'tools' / 'demo.py').write_text('import sys; print("demo args", sys.argv[1:])')
    run_install(tmp_path, PYTHON=sys.executable)  # copies install.sh, creates .venv/
    clean = {k: v for k, v in os.environ.items()
             if k not in ('VIRTUAL_ENV', 'CONDA_PREFIX', 'CONDA_DEFAULT_ENV', 'PYTHON')}
    out = subprocess.run(['bash', str(tmp_path / 'tools' / 'demo.sh'), '--method', 'dino'],
                         capture_output=True, text=True, timeout=300,
                         env={**clean, 'MMSVMF_INSTALL_DRY_RUN': '1'})
    assert out.returncode == 0, out.stderr
    assert "demo args ['--method', 'dino']" in out.stdout
    assert '[install] environment: .venv/bin/python' in out.stderr
    assert 'source .venv/bin/activate' in out.stderr
    assert 'pip install -e .[cpu,tools]' in out.stderr


def test_run_tests_sh_does_not_hide_the_environment_line():
    """tools/run_tests.sh captures only install.sh's stdout, so its stderr line shows."""
    text = open(osp.join(ROOT, 'tools', 'run_tests.sh')).read()
    line = next(x for x in text.splitlines() if 'tools/install.sh' in x)
    assert '$(bash tools/install.sh' in line and '2>' not in line, line


def test_tools_extra_holds_what_the_tools_import_pinned():
    """The attention-map tool (skimage.data) and the study driver (sklearn: digits, logistic
    probe) import these; the ``tools`` extra (installed by tools/demo.sh) must carry them,
    each pinned in requirements/constraints.txt, and the ``tests`` extra includes them."""
    import ast
    tree = ast.parse(open(osp.join(ROOT, 'setup.py')).read())
    lists = {node.targets[0].id: ast.literal_eval(node.value) for node in tree.body
             if isinstance(node, ast.Assign) and isinstance(node.value, ast.List)}
    tools = set(lists['TOOLS_REQUIRE'])
    imports = {'skimage': ('scikit-image', 'tools/visualization/attention_maps.py'),
               'sklearn': ('scikit-learn', 'mmselfsup_vmf/evaluation/logistic_probe.py')}
    pins = open(osp.join(ROOT, 'requirements', 'constraints.txt')).read()
    for module, (dist, user) in imports.items():
        assert module in open(osp.join(ROOT, user)).read(), user
        assert dist in tools and f'\n{dist}==' in pins, dist
    setup_text = open(osp.join(ROOT, 'setup.py')).read()
    assert "'tools': TOOLS_REQUIRE" in setup_text and "'tests': TOOLS_REQUIRE +" in setup_text
