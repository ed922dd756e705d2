"""Real faults on a real training process (``tools/train.py`` in a subprocess, tiny DINO):
SIGTERM / SIGINT at a random iteration saves at the next iteration boundary and exits with
128 + signal, and resuming continues bitwise as the uninterrupted run; ``kill -9`` at a
random iteration leaves only complete checkpoints, and auto-resume finishes the run with
the uninterrupted run's final state. (The uninterrupted run and the resumptions run in this
process: only the signalled run needs a process of its own.)"""
import glob
import os
import os.path as osp
import random
import signal
import subprocess
import sys
import time

import pytest
from mmengine.runner import Runner
from test_resume_exact import assert_bitwise_equal
from testing_utils import load_tool
from tiny_dino_cfg import ROOT, tiny_dino_cfg

from mmselfsup_vmf.utils.safe_load import load_checkpoint_file

EPOCHS, ITERS = 4, 6  # 48 images, batch 8; a checkpoint every epoch, the last 2 kept
SEED = int(os.environ.get('MMSV_FAULT_SEED', random.SystemRandom().randrange(10**6)))


def fault_cfg(work_dir):
    cfg = tiny_dino_cfg(work_dir, epochs=EPOCHS, num_train=48, batch=8, drop_path=0.2)
    cfg.default_hooks.checkpoint.max_keep_ckpts = 2
    return cfg


@pytest.fixture(scope='module')
def straight(tmp_path_factory):
    """The uninterrupted run (in this process): its final checkpoint and config file."""
    tmp = tmp_path_factory.mktemp('straight')
    cfg = fault_cfg(tmp / 'work')
    Runner.from_cfg(cfg).train()
    cfg_path = str(tmp / 'fault_cfg.py')
    fault_cfg(tmp / 'unused').dump(cfg_path)
    return load_checkpoint_file(str(tmp / 'work' / f'epoch_{EPOCHS}.pth')), cfg_path


def start_training(cfg_path, work_dir, *args):
    env = dict(os.environ, PYTHONPATH=ROOT, OMP_NUM_THREADS='1', MKL_NUM_THREADS='1')
    return subprocess.Popen(
        [sys.executable, osp.join(ROOT, 'tools', 'train.py'), cfg_path, '--work-dir',
         str(work_dir), *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env=env, start_new_session=True)  # its own process group (signalled as a whole)


def run_until_iteration(proc, iteration, timeout=120):
    """Read the log until iteration ``iteration`` (1-based) has been logged; the lines."""
    lines, deadline = [], time.time() + timeout
    while time.time() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line)
        if 'Epoch(train)' in line:
            epoch, batch = line.split('Epoch(train)')[1].split(']')[:2]
            done = (int(epoch.strip(' [')) - 1) * ITERS + int(batch.strip(' [').split('/')[0])
            if done >= iteration:
                return lines
    raise AssertionError(f'iteration {iteration} was not reached:\n' + ''.join(lines[-20:]))


def final_state(ckpt):
    return dict(model=ckpt['state_dict'], optimizer=ckpt['optimizer'],
                schedulers=ckpt['param_schedulers'], iter=ckpt['meta']['iter'],
                epoch=ckpt['meta']['epoch'])


def finish_with_resume(cfg_path, work_dir):
    """``tools/train.py --resume`` in this process (the interrupted run was the real process;
    resuming needs no fresh interpreter); the lines its log file holds."""
    runner = load_tool('tools/train.py', 'train_tool_signals').main(
        [cfg_path, '--work-dir', str(work_dir), '--resume'])
    with open(osp.join(runner.log_dir, f'{runner.timestamp}.log')) as f:
        return f.read()


@pytest.mark.slow
@pytest.mark.parametrize('signame', ['SIGTERM', 'SIGINT'])
def test_signal_saves_at_the_next_iteration_and_resume_is_exact(tmp_path, straight, signame):
    final, cfg_path = straight
    rng = random.Random(f'{SEED}-{signame}')
    at = rng.randrange(2, EPOCHS * ITERS - 1)
    work_dir = tmp_path / 'work'
    proc = start_training(cfg_path, work_dir)
    run_until_iteration(proc, at)
    # to the whole process group, as a terminal's Ctrl-C or slurm's scancel do: the loader
    # worker gets it too and must keep serving batches until the boundary
    os.killpg(proc.pid, getattr(signal, signame))
    out, _ = proc.communicate(timeout=120)
    note = f'(MMSV_FAULT_SEED={SEED}, signal after iteration {at})'
    assert proc.returncode == 128 + getattr(signal, signame), out[-3000:] + note
    assert 'Traceback' not in out, out[-3000:] + note
    stop_line = [line for line in out.splitlines() if f'{signame} received' in line]
    assert len(stop_line) == 1, note
    print(stop_line[0], note)  # shown with pytest -s
    saved = stop_line[0].split('saved ')[1].split(';')[0]
    assert open(work_dir / 'last_checkpoint').read() == saved
    ckpt = load_checkpoint_file(saved)
    assert ckpt['meta']['interrupted_by'] == signame
    stopped_after = ckpt['meta']['iter']
    assert at <= stopped_after < EPOCHS * ITERS, note
    if stopped_after % ITERS:  # within an epoch: the batches done are recorded
        assert ckpt['meta']['batches_done_in_epoch'] == stopped_after % ITERS

    out = finish_with_resume(cfg_path, work_dir)
    logged = [line for line in out.splitlines() if 'Epoch(train)' in line]
    assert len(logged) == EPOCHS * ITERS - stopped_after, note  # no batch repeated or lost
    resumed = load_checkpoint_file(str(work_dir / f'epoch_{EPOCHS}.pth'))
    assert_bitwise_equal(final_state(final), final_state(resumed))


@pytest.mark.slow
def test_kill_9_leaves_complete_checkpoints_and_auto_resume_finishes_exactly(tmp_path,
                                                                            straight):
    final, cfg_path = straight
    at = random.Random(f'{SEED}-kill').randrange(ITERS + 1, EPOCHS * ITERS - 1)
    note = f'(MMSV_FAULT_SEED={SEED}, kill -9 after iteration {at})'
    work_dir = tmp_path / 'work'
    proc = start_training(cfg_path, work_dir)
    run_until_iteration(proc, at)
    os.killpg(proc.pid, signal.SIGKILL)  # the trainer and its data-loader worker
    proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    checkpoints = glob.glob(str(work_dir / '*.pth'))
    assert checkpoints, note
    for path in checkpoints:  # every file under a checkpoint name is complete
        assert 'state_dict' in load_checkpoint_file(path), path + note
    assert open(work_dir / 'last_checkpoint').read() in checkpoints

    finish_with_resume(cfg_path, work_dir)
    resumed = load_checkpoint_file(str(work_dir / f'epoch_{EPOCHS}.pth'))
    assert_bitwise_equal(final_state(final), final_state(resumed))
    assert not [n for n in os.listdir(work_dir) if n.endswith('.tmp')]
