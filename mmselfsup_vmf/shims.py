"""Small compatibility shims for the pinned OpenMMLab stack.

1. mmengine 0.10.x cannot read its own checkpoints with torch >= 2.6's
   ``weights_only=True`` default (they pickle a ``HistoryBuffer``), and its http loader
   passes ``weights_only=False`` (any code in the file runs). Every scheme loader of
   mmengine's ``CheckpointLoader`` is replaced by one that reads with
   ``weights_only=True`` and the allowlist of :mod:`mmselfsup_vmf.utils.safe_load`;
   ``Runner.resume``, ``load_from``, ``load_checkpoint``, ``init_cfg=Pretrained`` (mmpretrain,
   mmseg) all go through it.
2. ``mmcv-lite`` (CPU machines) has no compiled ``mmcv._ext``; ``import mmseg.models``
   then fails on a module-level ``from mmcv.ops import point_sample``. We install a light
   ``mmcv.ops`` that exposes the pure-PyTorch ops and raises ``ModuleNotFoundError`` for
   compiled ones, exactly what mmseg's own guards expect. Does nothing with full mmcv.
   mmcv-lite's import-time warning about one such op is silenced (see
   :func:`silence_mmcv_lite_warning`).
"""
import importlib.util
import os.path as osp
import sys
import types
import warnings


def apply_checkpoint_loader_shim() -> None:
    from mmengine.runner.checkpoint import CheckpointLoader

    from .utils.safe_load import guard_scheme_loader, load_from_local
    for prefix, loader in list(CheckpointLoader._schemes.items()):
        CheckpointLoader.register_scheme(
            prefixes=prefix, force=True,
            loader=load_from_local if prefix == '' else guard_scheme_loader(loader))


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


def silence_mmcv_lite_warning() -> None:
    """With mmcv-lite, importing mmcv's transformer bricks (mmpretrain, mmseg do) warns
    "You should install ``mmcv`` rather than ``mmcv-lite`` if you need this module" about
    ``MultiScaleDeformableAttention``, a compiled op that none of our models uses (Deformable
    DETR's); the stand-in ``mmcv.ops`` above raises a clear error if anything asks for it."""
    if not _mmcv_has_compiled_ops():
        warnings.filterwarnings(
            'ignore', message='Fail to import ``MultiScaleDeformableAttention``',
            category=UserWarning)


def apply_all() -> None:
    apply_checkpoint_loader_shim()
    silence_mmcv_lite_warning()
    apply_mmcv_ops_shim()
