"""Two small compatibility shims for the pinned OpenMMLab stack.

1. ``torch.load`` defaults to ``weights_only=True`` since torch 2.6, but mmengine 0.10.x
   calls it without the flag, so it cannot read the checkpoints mmengine itself writes
   (they pickle a ``HistoryBuffer``). We re-register mmengine's local-file loader with
   ``weights_only=False``; ``Runner.resume``, ``load_checkpoint`` and mmseg's
   ``init_model`` all go through it.
2. ``mmcv-lite`` (CPU machines) has no compiled ``mmcv._ext``; ``import mmseg.models``
   then fails on a module-level ``from mmcv.ops import point_sample``. We install a light
   ``mmcv.ops`` that exposes the pure-PyTorch ops and raises ``ModuleNotFoundError`` for
   compiled ones, exactly what mmseg's own guards expect. Does nothing with full mmcv.
"""
import importlib.util
import os.path as osp
import sys
import types

import torch


def load_from_local(filename, map_location=None):
    """mmengine's local checkpoint loader, with ``weights_only=False``."""
    filename = osp.expanduser(filename)
    if not osp.isfile(filename):
        raise FileNotFoundError(f'checkpoint file {filename} can not be found.')
    return torch.load(filename, map_location=map_location, weights_only=False)


def apply_checkpoint_loader_shim() -> None:
    from mmengine.runner.checkpoint import CheckpointLoader
    CheckpointLoader.register_scheme(prefixes='', loader=load_from_local, force=True)


def _mmcv_has_compiled_ops() -> bool:
    try:
        return importlib.util.find_spec('mmcv._ext') is not None
    except ModuleNotFoundError:
        return False


def apply_mmcv_ops_shim() -> bool:
    """Install the pure-python ``mmcv.ops`` stand-in; returns True if it was needed."""
    if 'mmcv.ops' in sys.modules or _mmcv_has_compiled_ops():
        return False
    import mmcv
    ops = types.ModuleType('mmcv.ops')
    ops.__path__ = [osp.join(osp.dirname(mmcv.__file__), 'ops')]
    ops.__file__ = osp.join(ops.__path__[0], '__init__.py')
    ops.__package__ = 'mmcv.ops'
    sys.modules['mmcv.ops'] = ops
    point_sample = importlib.import_module('mmcv.ops.point_sample')
    ops.point_sample = point_sample.point_sample
    ops.bilinear_grid_sample = point_sample.bilinear_grid_sample

    def sigmoid_focal_loss(*args, **kwargs):
        raise NotImplementedError(
            'sigmoid_focal_loss needs the compiled mmcv (CUDA); mmcv-lite is installed')

    ops.sigmoid_focal_loss = sigmoid_focal_loss

    def __getattr__(name):
        if name.startswith('__'):
            raise AttributeError(name)
        raise ModuleNotFoundError(
            f'mmcv.ops.{name} needs the compiled mmcv (mmcv._ext); mmcv-lite is installed',
            name='mmcv._ext')

    ops.__getattr__ = __getattr__
    mmcv.ops = ops
    return True


def apply_all() -> None:
    apply_checkpoint_loader_shim()
    apply_mmcv_ops_shim()
