"""Checkpoint loading that never runs code from the file unless the user opts in.

Every checkpoint is read with ``torch.load(weights_only=True)`` plus an allowlist of exactly
what mmengine's Runner and this project write (measured with
``torch.serialization.get_unsafe_globals_in_checkpoint`` on the checkpoints of every method's
demo config): mmengine's ``HistoryBuffer`` (message hub), numpy arrays/scalars/dtypes (message
hub values, numpy RNG state of ``RandomStateHook``) and the ``getattr(HistoryBuffer, name)``
that pickles the buffer's statistics methods. ``getattr`` is served by
:func:`history_buffer_getattr`, which resolves nothing else.

Anything else fails with :class:`UntrustedCheckpointError`, one line naming the file, the type
and the opt-in: ``--trust-checkpoint`` (tools), ``MMSELFSUP_VMF_TRUST_CHECKPOINTS=1``
(any process) or ``trust_checkpoint = True`` in a config run by ``tools/train.py`` or with
``FaultTolerantCheckpointHook``.
"""
import contextlib
import os
import os.path as osp
import pickle
import re
from typing import Iterable, List

import numpy as np
import torch
from mmengine.logging import HistoryBuffer

TRUST_ENV = 'MMSELFSUP_VMF_TRUST_CHECKPOINTS'
OPT_IN = (f'--trust-checkpoint (tools), {TRUST_ENV}=1 or trust_checkpoint=True in the config')


class UntrustedCheckpointError(pickle.UnpicklingError, ValueError):
    """The checkpoint needs a type outside the allowlist (its pickle could run code)."""


class UnreadableCheckpointError(ValueError):
    """The file is not a complete torch checkpoint (truncated, corrupt, not a checkpoint)."""


def history_buffer_getattr(obj, name: str):
    """``getattr`` restricted to what mmengine pickles: a ``HistoryBuffer`` statistics method
    (``HistoryBuffer.min`` ... are stored by reference as ``getattr(HistoryBuffer, 'min')``)."""
    # min/max/current/mean are registered lazily (first HistoryBuffer()), custom ones via
    # HistoryBuffer.register_statistics
    if obj is HistoryBuffer and name in {'min', 'max', 'current', 'mean',
                                         *HistoryBuffer._statistics_methods}:
        return getattr(obj, name)
    raise pickle.UnpicklingError(
        f'builtins.getattr({getattr(obj, "__name__", type(obj).__name__)}, {name!r})')


#: numeric dtypes only (message-hub float64/int64 histories, the uint32 MT19937 state); no
#: object arrays.
NUMPY_DTYPES = ('bool', 'int8', 'int16', 'int32', 'int64', 'uint8', 'uint16', 'uint32', 'uint64',
                'float16', 'float32', 'float64')


def _numpy_globals() -> List:
    multiarray = np.core.multiarray
    return [np.ndarray, np.dtype, *{type(np.dtype(name)) for name in NUMPY_DTYPES},
            (multiarray._reconstruct, 'numpy.core.multiarray._reconstruct'),
            (multiarray.scalar, 'numpy.core.multiarray.scalar')]


def checkpoint_allowlist() -> List:
    """What ``torch.serialization.safe_globals`` gets on top of torch's own tensor types."""
    return [HistoryBuffer, (history_buffer_getattr, 'builtins.getattr'), *_numpy_globals()]


def trust_enabled() -> bool:
    return os.environ.get(TRUST_ENV, '').strip().lower() in ('1', 'true', 'yes')


def set_trust(trust: bool = True) -> None:
    """Process-wide opt-in (inherited by data-loader workers and child processes)."""
    if trust:
        os.environ[TRUST_ENV] = '1'
    else:
        os.environ.pop(TRUST_ENV, None)


def _first_line(e: BaseException) -> str:
    """``Type: first sentence`` (torch appends paragraphs of advice to its messages)."""
    text = str(e).strip()
    return f'{type(e).__name__}: {text.splitlines()[0].split(". ")[0] if text else ""}'


def _offending_type(source, error: Exception) -> str:
    """The global the allowlist refused, from the file's pickle (never executed) or from
    torch's message."""
    if isinstance(source, str):
        with contextlib.suppress(Exception):
            unsafe = torch.serialization.get_unsafe_globals_in_checkpoint(source)
            if unsafe:
                return ', '.join(sorted(unsafe))
    match = re.search(r'GLOBAL (\S+)|(builtins\.getattr\([^)]*\))|reduce for unrecognized '
                      r'function (\S+)|but got <class \'([^\']+)\'>', str(error))
    if match:
        return next(g for g in match.groups() if g)
    return _first_line(error)


def _set_environment(values: dict) -> None:
    for name, value in values.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


@contextlib.contextmanager
def _environment(**values):
    """Set (str) or unset (None) environment variables for the duration of the block."""
    saved = {name: os.environ.get(name) for name in values}
    try:
        _set_environment(values)
        yield
    finally:
        _set_environment(saved)


@contextlib.contextmanager
def refusing_untrusted(source, extra_safe: Iterable = ()):
    """Run a ``torch.load`` under the allowlist; translate its refusals into one line.

    Also forces ``weights_only=True`` on loads that pass ``weights_only=False`` explicitly
    (``torch.hub.load_state_dict_from_url``, used by mmengine's http/torchvision/mmcls
    loaders), via torch's own ``TORCH_FORCE_WEIGHTS_ONLY_LOAD`` switch (its opposite,
    ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD``, is lifted meanwhile: the opt-in is ours).
    """
    if trust_enabled():
        yield
        return
    with _environment(TORCH_FORCE_WEIGHTS_ONLY_LOAD='1', TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=None), \
            torch.serialization.safe_globals(checkpoint_allowlist() + list(extra_safe)):
        try:
            yield
        except pickle.UnpicklingError as e:
            if isinstance(e, UntrustedCheckpointError):
                raise
            raise UntrustedCheckpointError(
                f'{source}: refusing to unpickle {_offending_type(source, e)}: not a type '
                f'mmengine or mmselfsup_vmf writes, and unpickling it could run code; if '
                f'you trust this file, opt in with {OPT_IN}') from None


def load_checkpoint_file(filename: str, map_location=None, extra_safe: Iterable = (),
                         mmap: bool = False):
    """``torch.load`` of a local file: allowlisted unless trusted; one-line errors."""
    filename = osp.expanduser(str(filename))
    if not osp.isfile(filename):
        raise FileNotFoundError(f'checkpoint file {filename} can not be found.')
    try:
        with refusing_untrusted(filename, extra_safe):
            return torch.load(filename, map_location=map_location,
                              weights_only=not trust_enabled(), mmap=mmap or None)
    except UntrustedCheckpointError:
        raise
    except Exception as e:  # noqa: BLE001  (torch raises many types for a damaged file)
        raise UnreadableCheckpointError(
            f'{filename}: not a readable torch checkpoint ({_first_line(e)})') from None


def guard_scheme_loader(loader):
    """Wrap one of mmengine's ``CheckpointLoader`` scheme loaders (http, s3, ...)."""
    if getattr(loader, '_refuses_untrusted', False):
        return loader

    def guarded(filename, map_location=None):
        with refusing_untrusted(filename):
            return loader(filename, map_location)

    guarded.__name__ = loader.__name__  # mmengine logs 'Loads checkpoint by <name[10:]>'
    guarded._refuses_untrusted = True
    return guarded


def load_from_local(filename, map_location=None):
    """mmengine's local-file scheme, through :func:`load_checkpoint_file`."""
    return load_checkpoint_file(filename, map_location)


load_from_local._refuses_untrusted = True
