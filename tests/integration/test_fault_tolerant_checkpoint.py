"""FaultTolerantCheckpointHook on real Runner runs (tiny DINO): old checkpoints are deleted
only after the new one is complete, auto-resume skips an unreadable latest checkpoint, an
unreadable explicit one is a one-line error; AtomicLocalBackend against a real kill -9 in
the middle of a write."""
import os
import os.path as osp
import shutil
import signal
import subprocess
import sys
import time

import pytest
from mmengine.fileio import LocalBackend
from mmengine.hooks import Hook
from mmengine.runner import Runner
from test_resume_exact import assert_bitwise_equal
from testing_utils import mmengine_messages
from tiny_dino_cfg import ROOT, tiny_dino_cfg

from mmselfsup_vmf.engine.atomic_file_backend import AtomicLocalBackend
from mmselfsup_vmf.utils.safe_load import UnreadableCheckpointError, load_checkpoint_file


class _FilesAtSave(Hook):
    """The epoch checkpoints on disk at each save, seen from inside ``save_checkpoint``."""

    def __init__(self):
        self.seen = []

    def before_save_checkpoint(self, runner, checkpoint):
        self.seen.append(sorted(n for n in os.listdir(runner.work_dir) if n.endswith('.pth')))


@pytest.mark.parametrize('hook_type', ['FaultTolerantCheckpointHook', 'CheckpointHook'])
def test_rotation_deletes_the_old_checkpoint_after_the_new_one(tmp_path, hook_type):
    cfg = tiny_dino_cfg(tmp_path / 'work', epochs=3)
    cfg.default_hooks.checkpoint = dict(type=hook_type, interval=1, max_keep_ckpts=1)
    runner = Runner.from_cfg(cfg)
    files = _FilesAtSave()
    runner.register_hook(files)
    runner.train()
    assert sorted(n for n in os.listdir(tmp_path / 'work') if n.endswith('.pth')) == [
        'epoch_3.pth']
    if hook_type == 'FaultTolerantCheckpointHook':
        assert files.seen == [[], ['epoch_1.pth'], ['epoch_2.pth']]
    else:  # mmengine's own hook: no checkpoint on disk while the next one is written
        assert files.seen == [[], [], []]


def truncate(path):
    size = osp.getsize(path)
    with open(path, 'r+b') as f:
        f.truncate(size // 2)


@pytest.fixture(scope='module')
def finished_run(tmp_path_factory):
    """A finished 3-epoch run keeping all checkpoints."""
    work = tmp_path_factory.mktemp('finished') / 'work'
    cfg = tiny_dino_cfg(work, epochs=3)
    cfg.default_hooks.checkpoint.max_keep_ckpts = -1
    Runner.from_cfg(cfg).train()
    return work


@pytest.fixture
def three_epochs(tmp_path, finished_run):
    """A copy of the finished run for this test: config, work dir, final model state."""
    work = tmp_path / 'work'
    shutil.copytree(finished_run, work)
    (work / 'last_checkpoint').write_text(str(work / 'epoch_3.pth'))
    cfg = tiny_dino_cfg(work, epochs=3)
    cfg.default_hooks.checkpoint.max_keep_ckpts = -1
    return cfg, work, load_checkpoint_file(str(work / 'epoch_3.pth'))['state_dict']


def resume_runner(cfg, load_from=None):
    cfg = cfg.copy()
    cfg.resume, cfg.load_from = True, load_from
    return Runner.from_cfg(cfg)


def test_auto_resume_skips_a_truncated_latest_checkpoint(three_epochs):
    cfg, work, final = three_epochs
    truncate(work / 'epoch_3.pth')
    with pytest.raises(UnreadableCheckpointError):
        load_checkpoint_file(str(work / 'epoch_3.pth'))  # the damage is real
    runner = resume_runner(cfg)
    with mmengine_messages() as messages:
        runner.train()  # resumes from epoch_2.pth and trains epoch 3 again
    assert f'the latest checkpoint {work / "epoch_3.pth"} is not readable; resuming from ' \
           f'the newest readable one: {work / "epoch_2.pth"}' in messages
    assert_bitwise_equal(final, runner.model.state_dict())


def test_auto_resume_with_a_pointer_to_a_missing_file(three_epochs):
    cfg, work, _ = three_epochs
    (work / 'last_checkpoint').write_text(str(work / 'epoch_9.pth'))
    os.remove(work / 'epoch_3.pth')
    stale = work / '.epoch_3.pth.x1y2z3.tmp'  # a writer killed before its rename
    stale.write_bytes(b'partial')
    runner = resume_runner(cfg)
    runner.train()
    assert runner.iter == 3 * 2  # resumed at epoch 2 (2 iterations per epoch), finished
    assert not stale.exists()


def test_explicit_unreadable_checkpoint_names_the_alternative(three_epochs):
    cfg, work, _ = three_epochs
    truncate(work / 'epoch_3.pth')
    with pytest.raises(UnreadableCheckpointError) as err:
        resume_runner(cfg, str(work / 'epoch_3.pth')).train()
    message = str(err.value)
    assert '\n' not in message and 'epoch_3.pth: not a readable torch checkpoint' in message
    assert message.endswith(f'the newest readable checkpoint there is {work / "epoch_2.pth"}')


def test_auto_resume_fails_when_no_checkpoint_is_readable(three_epochs):
    cfg, work, _ = three_epochs
    for n in (1, 2, 3):
        truncate(work / f'epoch_{n}.pth')
    with pytest.raises(UnreadableCheckpointError, match='holds no other readable checkpoint'):
        resume_runner(cfg).train()


WRITER = '''
import importlib.util, sys
from mmengine.fileio import LocalBackend
# the backend's module alone (importing mmselfsup_vmf would register every model first)
spec = importlib.util.spec_from_file_location('atomic', sys.argv[4])
atomic = importlib.util.module_from_spec(spec)
spec.loader.exec_module(atomic)
backend = atomic.AtomicLocalBackend() if sys.argv[1] == 'atomic' else LocalBackend()
backend.put(b'n' * int(sys.argv[3]), sys.argv[2])
'''
BACKEND_FILE = osp.join(ROOT, 'mmselfsup_vmf', 'engine', 'atomic_file_backend.py')


def kill_mid_write(kind, dst, size, old_size):
    """Start a writer of ``size`` bytes to ``dst`` and kill -9 it once a partial file (more
    than the ``old_size`` bytes already there) is on disk: under the final name for
    LocalBackend, as a temporary for AtomicLocalBackend."""
    env = dict(os.environ, PYTHONPATH=ROOT)
    proc = subprocess.Popen([sys.executable, '-c', WRITER, kind, str(dst), str(size),
                             BACKEND_FILE], env=env)
    directory, deadline = osp.dirname(dst), time.time() + 60
    while proc.poll() is None and time.time() < deadline:
        sizes = []
        for name in os.listdir(directory):
            try:
                sizes.append(osp.getsize(osp.join(directory, name)))
            except OSError:  # renamed or removed meanwhile
                pass
        if any(old_size < s < size for s in sizes):
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
            return True
        time.sleep(0.001)
    proc.wait()
    return False  # the write finished before a partial file was seen


@pytest.mark.parametrize('kind', ['atomic', 'local'])
def test_kill_9_during_a_write(tmp_path, kind):
    """AtomicLocalBackend: the destination keeps its old content; mmengine's LocalBackend
    (control): the destination is truncated."""
    dst = tmp_path / 'epoch_2.pth'
    old = b'old checkpoint'
    dst.write_bytes(old)
    size = 256 * 2**20
    if not kill_mid_write(kind, dst, size, len(old)):
        pytest.skip('the 256 MB write finished before it could be interrupted')
    if kind == 'atomic':
        assert dst.read_bytes() == old
        leftovers = [n for n in os.listdir(tmp_path) if n != 'epoch_2.pth']
        assert len(leftovers) == 1 and leftovers[0].startswith('.epoch_2.pth.')
    else:
        assert 0 < osp.getsize(dst) < size


def test_atomic_backend_writes_what_local_backend_writes(tmp_path):
    AtomicLocalBackend().put(b'abc', tmp_path / 'a.bin')
    LocalBackend().put(b'abc', tmp_path / 'b.bin')
    assert (tmp_path / 'a.bin').read_bytes() == (tmp_path / 'b.bin').read_bytes()
    assert os.stat(tmp_path / 'a.bin').st_mode == os.stat(tmp_path / 'b.bin').st_mode
    AtomicLocalBackend().put_text('x', tmp_path / 'a.bin')
    assert (tmp_path / 'a.bin').read_text() == 'x'
    assert sorted(os.listdir(tmp_path)) == ['a.bin', 'b.bin']  # no temporary left
