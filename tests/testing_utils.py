"""Small helpers shared by several test files (importable: tests/ is on sys.path via conftest)."""
import importlib.util
import logging
import os.path as osp
from contextlib import contextmanager

import numpy as np
import pytest
import torch
from mmengine.logging import HistoryBuffer, MMLogger

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))

# The demo-learns tests train a demo config unchanged: 3-4 min on 2 idle cores, 15 min at
# load 14 (2 cores), where pytest.ini's 900 s timeout stopped them. Their result does not
# depend on the load (seeded, one thread); their wall time does, so they get an hour.
DEMO_TIMEOUT = pytest.mark.timeout(3600)


def load_tool(relpath: str, name: str = None):
    """Import a script under tools/ (e.g. 'tools/model_converters/extract_backbone.py')."""
    path = osp.join(ROOT, relpath)
    name = name or osp.splitext(osp.basename(path))[0]
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def loader_workers():
    """This process's live data-loader worker children (torch names their thread
    pt_data_worker; the Process objects no longer hold their target once started)."""
    import multiprocessing
    workers = []
    for child in multiprocessing.active_children():
        try:
            with open(f'/proc/{child.pid}/comm') as f:
                if f.read().strip() == 'pt_data_worker':
                    workers.append(child)
        except OSError:  # exited meanwhile, or no /proc
            pass
    return workers


@contextmanager
def mmengine_messages():
    """Collect what mmengine's current logger says (e.g. PretrainedInit's key mismatches)."""
    logger = MMLogger.get_current_instance()
    records = []

    class Collect(logging.Handler):
        def emit(self, record):
            records.append(record.getMessage())

    handler = Collect(level=logging.DEBUG)
    logger.addHandler(handler)
    try:
        yield records
    finally:
        logger.removeHandler(handler)


FORKSERVER_PRELOAD = ['torch', 'mmengine', 'mmpretrain', 'mmselfsup_vmf']


def fork_context():
    """A multiprocessing context whose children are forked from a clean server process.

    Forking the test process itself breaks once any earlier test in it started autograd's
    worker threads ("Unable to handle autograd's threading in combination with fork-based
    multiprocessing"), which depends on what ran before under pytest-xdist. The forkserver
    imports torch, mmengine, mmpretrain and this package once, never runs autograd, and forks
    each rank from there (no re-import per rank, unlike 'spawn')."""
    import multiprocessing as mp
    ctx = mp.get_context('forkserver')
    ctx.set_forkserver_preload(FORKSERVER_PRELOAD)
    return ctx


def start_ranks(fn, nprocs: int, args=(), join: bool = True):
    """``torch.multiprocessing.spawn`` (``fn(index, *args)`` per process, a child's error
    re-raised here) with processes forked from a clean server (``fork_context``)."""
    import torch.multiprocessing as mp
    fork_context()  # sets the preload list of multiprocessing's forkserver
    return mp.start_processes(fn, args=args, nprocs=nprocs, join=join,
                              start_method='forkserver')


def assert_bitwise_equal(a, b, path='state'):
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and a.shape == b.shape, path
        assert torch.equal(a, b), f'{path} differs (max |diff| {(a - b).abs().max():.3g})'
    elif isinstance(a, dict):
        assert set(a) == set(b), f'{path}: keys {set(a) ^ set(b)}'
        for k in a:
            assert_bitwise_equal(a[k], b[k], f'{path}.{k}')
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            assert_bitwise_equal(x, y, f'{path}[{i}]')
    elif isinstance(a, np.ndarray):
        assert isinstance(b, np.ndarray) and a.dtype == b.dtype, path
        assert np.array_equal(a, b), f'{path} differs'
    elif isinstance(a, HistoryBuffer):  # message-hub buffers: compare their data
        assert type(b) is HistoryBuffer, path
        assert_bitwise_equal(vars(a), vars(b), path)
    else:
        assert a == b, f'{path}: {a!r} != {b!r}'


def assert_crop_law(dx, dy, coords, size, scale, p_min=1e-3):
    """Views of a coordinate ramp ``coords`` (value 4 x position) made by bilinear random
    resized crops to ``size`` px: the slopes ``dx``, ``dy`` (intensity per output pixel over
    the middle half) give each crop's width (sign: flip) and height; their area and aspect
    must follow mmpretrain's ``RandomResizedCrop`` (KS) and the flips p 0.5 (binomial)."""
    import numpy as np
    from mmpretrain.datasets.transforms import RandomResizedCrop
    from scipy import stats
    dx, dy = np.asarray(dx, dtype=np.float64), np.asarray(dy, dtype=np.float64)
    w, h = np.abs(dx).round(), dy.round()
    side = coords.shape[0]
    np.random.seed(0)
    ref = RandomResizedCrop(scale=size, crop_ratio_range=scale)
    boxes = np.array([ref.rand_crop_params(coords)[2:] for _ in range(4000)])
    ks_area = stats.ks_2samp(w * h / side**2, boxes[:, 0] * boxes[:, 1] / side**2)
    ks_aspect = stats.ks_2samp(np.log(w / h), np.log(boxes[:, 1] / boxes[:, 0]))
    assert ks_area.pvalue > p_min and ks_aspect.pvalue > p_min, (ks_area, ks_aspect)
    assert stats.binomtest(int((dx < 0).sum()), len(dx), 0.5).pvalue > p_min
