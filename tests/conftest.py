import gc
import os

import pytest
import torch

# One torch thread by default: tests spawn gloo ranks and data-loader workers on a 2-core
# machine, and OpenMP spin-waits make 2 threads per process far slower than 1 under that
# contention (MMSV_TEST_THREADS overrides).
torch.set_num_threads(int(os.environ.get('MMSV_TEST_THREADS', 1)))
# tools/train.py and tools/demo.py called in-process (and subprocesses) keep that count
os.environ.setdefault('OMP_NUM_THREADS', str(torch.get_num_threads()))

import mmselfsup_vmf  # noqa: E402,F401  (applies shims, registers modules)


@pytest.fixture(autouse=True)
def _fresh_visualizers():
    """Runners built in the same second share a timestamp-named Visualizer and logger (mmengine
    reuses the instances with their old save_dir/log file); forget earlier ones so each test
    logs where it looks."""
    from mmengine.logging import MMLogger
    from mmengine.visualization import Visualizer
    for name in [n for n in MMLogger._instance_dict if n != 'mmengine']:
        MMLogger._instance_dict.pop(name)
    pending = [Visualizer]
    while pending:  # each subclass (e.g. mmpretrain's UniversalVisualizer) has its own dict
        cls = pending.pop()
        cls._instance_dict.clear()
        pending.extend(cls.__subclasses__())
    yield


@pytest.fixture(autouse=True)
def _mmpretrain_scope():
    """mmseg tests switch mmengine's global default scope to 'mmseg'; later tests build
    mmpretrain datasets/transforms by name, so every test starts in the mmpretrain scope."""
    from mmengine.registry import init_default_scope
    init_default_scope('mmpretrain')
    yield


def pytest_collection_finish(session):
    """Move everything imported so far (torch, mmengine, the test modules: ~400k objects)
    out of the cyclic collector's view: a full collection then takes microseconds instead of
    0.2-3 s, cheap enough to run after every test."""
    gc.collect()
    gc.freeze()


@pytest.fixture(autouse=True)
def _collect_garbage():
    """Runners, models and their data sets form reference cycles that only the cyclic
    collector frees, and it runs rarely (it counts objects, not bytes): without this a test
    process held the models of earlier tests (7.5 GB after the two SimDINOv2 ViT-L configs).
    Then stop the data-loader workers whose iterator is gone: StopOnSignalHook stops them
    when training ends, but a run that raised skips that, and torch's clean-up of the
    collected iterator cannot stop them (its stop message goes to a queue the same collection
    already closed; the workers ignore SIGTERM)."""
    yield
    import sys
    if 'torch._dynamo' in sys.modules:  # compiled code of this test's models: dynamo keeps
        sys.modules['torch._dynamo'].reset()  # 8 entries per code object per process, and
    gc.collect()  # a pytest-xdist worker compiles DINOHead.forward for many tests' models
    kill_orphan_loader_workers()


def kill_orphan_loader_workers():
    import signal

    from testing_utils import loader_workers
    from torch.utils.data.dataloader import _MultiProcessingDataLoaderIter
    workers = loader_workers()
    if not workers:
        return
    live = {w.pid for o in gc.get_objects() if type(o) is _MultiProcessingDataLoaderIter
            for w in o._workers}
    for child in workers:
        if child.pid not in live:
            os.kill(child.pid, signal.SIGKILL)
            child.join(timeout=5)


def pytest_sessionfinish(session, exitstatus):
    """Data-loader workers that outlived their test (persistent workers of runners the tests
    keep, which ignore SIGTERM during training: StopOnSignalHook) would keep multiprocessing's
    exit handler waiting; kill them when the session ends."""
    import multiprocessing
    import signal
    # torch's SIGCHLD handler would raise for a worker killed here
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    for child in multiprocessing.active_children():
        if child.daemon:
            os.kill(child.pid, signal.SIGKILL)
            child.join(timeout=5)
