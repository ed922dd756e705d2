"""``torch.compile`` of the student's and the teacher's backbone, neck and head.

``nn.Module.compile`` compiles a module in place: parameter names, ``state_dict`` keys and
checkpoints stay those of the eager model (``torch.compile(module)`` would return a wrapper
whose keys gain an ``_orig_mod.`` prefix), so a checkpoint written with compilation resumes
without it and vice versa. The loss, the EMA update and the optimiser step stay eager: they
are small next to the ViT, and the losses' host-side checks would break the graph.
"""
import time
from typing import Iterable, Optional, Union

from mmengine.logging import print_log
from torch import nn

COMPILED_PARTS = ('backbone', 'neck', 'head')
# one static graph per crop size (2 global + local sizes) instead of a dynamic-shape graph
DEFAULT_COMPILE_KWARGS = dict(dynamic=False)


def compile_kwargs(compile: Union[bool, dict, None]) -> Optional[dict]:
    """``model.compile`` (False/None, True, or a dict of ``torch.compile`` arguments such as
    ``backend`` and ``mode``) -> the arguments, or None for eager."""
    if compile is None or compile is False:
        return None
    if compile is True:
        return dict(DEFAULT_COMPILE_KWARGS)
    if isinstance(compile, dict):
        return {**DEFAULT_COMPILE_KWARGS, **compile}
    raise TypeError('model.compile must be True/False or a dict of torch.compile arguments '
                    f'(e.g. dict(backend="inductor", mode="max-autotune")), got {compile!r}')


def python_float_drop_probs_(module: nn.Module) -> None:
    """mmpretrain's ViT gives each layer's DropPath a numpy float (``np.linspace``); dynamo
    traces numpy scalars as tensors, so mmcv's ``if drop_prob == 0.`` becomes a
    data-dependent branch that breaks the graph inside the layer loop and makes dynamo skip
    the whole ViT forward. The same value as a Python float keeps one graph."""
    for m in module.modules():
        prob = getattr(m, 'drop_prob', None)
        if prob is not None and type(prob) is not float:  # np.float64 subclasses float
            m.drop_prob = float(prob)


def compile_parts(module_dicts: Iterable[nn.ModuleDict], kwargs: dict) -> None:
    """Compile every backbone / neck / head found in ``module_dicts``, in place."""
    for parts in module_dicts:
        for name in COMPILED_PARTS:
            if name in parts:
                python_float_drop_probs_(parts[name])
                parts[name].compile(**kwargs)


def inductor_cache_dir() -> str:
    """Where inductor keeps compiled kernels (``TORCHINDUCTOR_CACHE_DIR`` or its default)."""
    from torch._inductor.runtime.cache_dir_utils import cache_dir
    return cache_dir()


class CompileAnnouncer:
    """Compilation runs inside the first calls and prints nothing (minutes on a CPU): say when
    it starts, where the kernels are cached, and when the first compiled iteration is done.
    ``training_forward()`` is called at each training forward; the second call closes the
    first iteration (forward, backward, update), also under DDP, which bypasses
    ``train_step`` of the model."""

    def __init__(self, kwargs: dict):
        self.start: Optional[float] = None
        self.done = False
        backend = kwargs.get('backend', 'inductor')
        cache = (f'; compiled kernels are cached in {inductor_cache_dir()} (set '
                 'TORCHINDUCTOR_CACHE_DIR to move it), so a rerun compiles faster'
                 if backend == 'inductor' else '')
        print_log(f'torch.compile({", ".join(f"{k}={v!r}" for k, v in kwargs.items())}) of the '
                  'backbone, neck and head of student and teacher: graphs compile at their '
                  'first call (the k-NN probe, then the first training iteration, one graph '
                  f'per crop size); that can take minutes with no output{cache}',
                  logger='current')

    def training_forward(self) -> None:
        if self.done:
            return
        if self.start is None:
            self.start = time.perf_counter()
            print_log('torch.compile: compiling the training graphs (first iteration)...',
                      logger='current')
            return
        self.done = True
        print_log(f'torch.compile: first compiled iteration done in '
                  f'{time.perf_counter() - self.start:.1f} s; the next ones reuse its graphs',
                  logger='current')
