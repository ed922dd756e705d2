"""The published recipes shrunk for 2 CPU processes, and the two ways the tests launch them.

``shrunk_recipe`` loads ``configs/<method>/<recipe>.py`` as a user would and changes only
what a CPU cannot afford: a 2-layer 48-d ViT (patch 8), 32/16 px crops with 2 local crops,
small heads, a folder of 16 generated JPEGs (mmpretrain's ``CustomDataset``) instead of
ImageNet, 1 loader worker, a 60 s process-group timeout (a hang fails the test instead of
waiting 30 minutes). Schedules, optimiser wrappers, hooks, samplers, AMP and the FSDP2
strategy stay the recipe's. ``tools/train.py --epochs 3 --epoch-iters 2`` then makes it 3
epochs of 2 iterations (4 images per rank and iteration).

- ``dist_train``: ``tools/dist_train.sh CONFIG 2 ...`` in its own session (torchrun, as a
  user or slurm starts it), for signals and ``kill -9``.
- ``forked_ranks``: ``tools/train.py``'s ``main`` in 2 processes forked from a clean
  server (``testing_utils.fork_context``) with the environment torchrun gives its workers
  (the same Runner construction, without paying the imports twice more); each rank's exit
  code and last message come back.
"""
import os
import os.path as osp
import socket
import subprocess
import sys
import time
import traceback

import numpy as np
from mmengine.config import Config
from PIL import Image
from testing_utils import fork_context, load_tool

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
HERE = osp.dirname(osp.abspath(__file__))
RECIPES = {
    'dino': 'dino/vit-s16_8xb64.py',
    'dino_vmf': 'dino_vmf/vit-s16_8xb64.py',
    'ibot': 'ibot/vit-s16_8xb64.py',
    'ibot_vmf': 'ibot_vmf/vit-s16_8xb64.py',
    'simdino': 'simdino/vit-s16_8xb64.py',
    'simdinov2': 'simdinov2/vit-b16_8xb128.py',
    'simdinov2_fsdp': 'simdinov2/vit-l16_8xb128_fsdp.py',
}
EPOCHS, ITERS, PER_RANK, WORLD = 3, 2, 4, 2
NUM_IMAGES = ITERS * PER_RANK * WORLD
TRAIN_ARGS = ['--epochs', str(EPOCHS), '--epoch-iters', str(ITERS)]
K, WIDTH, BOTTLENECK = 64, 48, 32


def final_state(ckpt):
    """What a resumed run must reproduce bit for bit: weights, optimiser, schedules, step."""
    return dict(model=ckpt['state_dict'], optimizer=ckpt['optimizer'],
                schedulers=ckpt['param_schedulers'], iter=ckpt['meta']['iter'],
                epoch=ckpt['meta']['epoch'])


def make_images(folder, num=NUM_IMAGES, size=40, seed=0):
    """``num`` random-texture RGB JPEGs (a ``CustomDataset`` folder without labels)."""
    os.makedirs(folder, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(num):
        low = rng.integers(0, 256, (5, 5, 3), dtype=np.uint8)  # smooth, not white noise
        img = Image.fromarray(low).resize((size, size), Image.BICUBIC)
        img.save(osp.join(folder, f'img_{i:03d}.jpg'), quality=90)
    return folder


def shrunk_recipe(method, work_dir, data_root, **overrides):
    """``configs/<recipe>`` with a tiny model and data (see the module docstring)."""
    cfg = Config.fromfile(osp.join(ROOT, 'configs', RECIPES[method]))
    model = cfg.model
    model.backbone.update(arch=dict(embed_dims=WIDTH, num_layers=2, num_heads=3,
                                    feedforward_channels=2 * WIDTH), img_size=32, patch_size=8)
    model.head.update(in_channels=WIDTH, hidden_channels=64, bottleneck_channels=BOTTLENECK)
    if model.head.get('num_prototypes'):
        model.head.num_prototypes = K
        model.loss.update(num_prototypes=K, dim=BOTTLENECK)
    if model.get('patch_loss') and 'num_prototypes' in model.patch_loss:
        model.patch_loss.update(num_prototypes=K, dim=BOTTLENECK)
    if 'patch_size' in model.data_preprocessor:
        model.data_preprocessor.patch_size = 8
        cfg.train_dataloader.collate_fn.patch_size = 8  # the loader workers draw the masks
    loader = cfg.train_dataloader
    pipeline = loader.dataset.dataset.pipeline
    crop = next(t for t in pipeline if t.type == 'MultiCrop')
    crop.update(num_local=2, global_size=32, local_size=16)
    loader.update(batch_size=PER_RANK, num_workers=1)
    loader.dataset.dataset = dict(type='CustomDataset', data_root=str(data_root),
                                  with_label=False, pipeline=pipeline)
    cfg.env_cfg.dist_cfg = dict(backend='nccl', timeout=60)  # nccl: becomes gloo on a CPU
    cfg.default_hooks.checkpoint.interval = 1
    cfg.default_hooks.logger.interval = 1
    cfg.visualizer.vis_backends = [dict(type='LocalVisBackend')]
    cfg.work_dir = str(work_dir)
    cfg.merge_from_dict(overrides)
    return cfg


def dump(cfg, path, probes=()):
    """Write ``cfg`` (plus test-only hooks of ``probe_hooks.py``) as a config file."""
    if probes:
        cfg.custom_imports = dict(imports=['mmselfsup_vmf', 'probe_hooks'],
                                  allow_failed_imports=False)
        cfg.custom_hooks = list(cfg.get('custom_hooks', [])) + list(probes)
    cfg.dump(str(path))
    return str(path)


def free_port():
    with socket.socket() as sock:
        sock.bind(('127.0.0.1', 0))
        return sock.getsockname()[1]


def _env(port):
    return dict(os.environ, PYTHONPATH=os.pathsep.join([ROOT, HERE]), PORT=str(port),
                PYTHON=sys.executable, OMP_NUM_THREADS='1', MKL_NUM_THREADS='1')


def dist_train(cfg_path, work_dir, *args):
    """``tools/dist_train.sh CFG 2 --work-dir W ARGS`` in a new session (its own process
    group, signalled as a whole as slurm does); stdout+stderr in ``work_dir/launcher.log``."""
    os.makedirs(work_dir, exist_ok=True)
    log = open(osp.join(work_dir, 'launcher.log'), 'w')
    return subprocess.Popen(
        ['bash', osp.join(ROOT, 'tools', 'dist_train.sh'), cfg_path, str(WORLD),
         '--work-dir', str(work_dir), *args], stdout=log, stderr=subprocess.STDOUT,
        env=_env(free_port()), start_new_session=True, cwd=str(work_dir))


def wait_group(proc, timeout):
    """Wait for the launcher and every process of its group; False if any is left (then
    killed, so a failing test leaves nothing behind)."""
    deadline = time.time() + timeout
    try:
        proc.wait(timeout=max(1, deadline - time.time()))
    except subprocess.TimeoutExpired:
        pass
    while time.time() < deadline:
        try:
            os.killpg(proc.pid, 0)
        except ProcessLookupError:
            return proc.poll() is not None
        time.sleep(0.5)
    try:
        os.killpg(proc.pid, 9)
    except ProcessLookupError:
        pass
    proc.wait(timeout=30)
    return False


def _rank_main(rank, port, argv, out_dir):
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(WORLD),
                      LOCAL_WORLD_SIZE=str(WORLD), MASTER_ADDR='127.0.0.1',
                      MASTER_PORT=str(port))
    code, message = 0, ''
    try:
        load_tool('tools/train.py', 'train_tool_launcher').main(argv)
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 1
        message = '' if isinstance(e.code, int) else str(e.code)
    except BaseException as e:  # a raw exception: what the user would see as a traceback
        code, message = 1, 'TRACEBACK ' + ''.join(traceback.format_exception(e))
    with open(osp.join(out_dir, f'rank{rank}.result'), 'w') as f:
        f.write(f'{code}\n{message}')
    os._exit(0)  # the result is written; skip the forked interpreter's exit handlers


def forked_ranks(cfg_path, work_dir, *args, timeout=300):
    """``tools/train.py CFG --launcher pytorch --work-dir W ARGS`` on 2 forked ranks; each
    rank's (exit code, message). A rank that did not finish in time fails the test."""
    os.makedirs(work_dir, exist_ok=True)
    argv = [cfg_path, '--launcher', 'pytorch', '--work-dir', str(work_dir), *args]
    ctx = fork_context()
    port = free_port()
    procs = [ctx.Process(target=_rank_main, args=(r, port, argv, str(work_dir)))
             for r in range(WORLD)]
    for p in procs:
        p.start()
    deadline = time.time() + timeout
    for p in procs:
        p.join(timeout=max(1, deadline - time.time()))
    hung = [r for r, p in enumerate(procs) if p.is_alive()]
    for p in procs:
        if p.is_alive():
            p.kill()
            p.join()
    assert not hung, f'ranks {hung} still running after {timeout} s (a hang)'
    results = []
    for r in range(WORLD):
        with open(osp.join(work_dir, f'rank{r}.result')) as f:
            code, _, message = f.read().partition('\n')
        results.append((int(code), message))
    return results
