"""Atomic local writes for mmengine's file IO: a killed writer never leaves a partial file.

``mmengine.runner.checkpoint.save_checkpoint`` serialises to memory and hands the bytes to a
``mmengine.fileio`` backend's ``put``; ``LocalBackend.put`` opens the destination with
``'wb'`` and writes in place, so a crash (kill -9, power loss, full disk) mid-write leaves a
truncated ``epoch_N.pth`` under the final name. ``AtomicLocalBackend`` (registered as
``backend='atomic_local'``) writes a temporary file in the same directory, flushes and
fsyncs it, renames it over the destination with ``os.replace`` (atomic on POSIX) and fsyncs
the directory, so the destination is either the old file or the complete new one.
"""
import contextlib
import os
import os.path as osp
import tempfile
from pathlib import Path
from typing import Union

from mmengine.fileio import LocalBackend, register_backend

#: temporary files look like ``.epoch_3.pth.<random>.tmp`` (hidden, never ``*.pth``)
TMP_SUFFIX = '.tmp'


def _default_mode() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def _fsync_dir(dirname: str) -> None:
    with contextlib.suppress(OSError):  # not every file system can open a directory
        fd = os.open(dirname, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def atomic_write_bytes(data: bytes, filepath: Union[str, Path]) -> None:
    """Write ``data`` to ``filepath`` so that no reader ever sees a partial file."""
    filepath = str(filepath)
    dirname = osp.dirname(osp.abspath(filepath))
    os.makedirs(dirname, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f'.{osp.basename(filepath)}.', suffix=TMP_SUFFIX,
                               dir=dirname)
    try:
        with os.fdopen(fd, 'wb') as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, _default_mode())  # mkstemp creates 0600; keep open()'s permissions
        os.replace(tmp, filepath)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise
    _fsync_dir(dirname)


def is_stale_temporary(filename: str) -> bool:
    """A temporary file left by a writer that was killed before its rename."""
    return filename.startswith('.') and filename.endswith(TMP_SUFFIX)


@register_backend('atomic_local')
class AtomicLocalBackend(LocalBackend):
    """mmengine's ``LocalBackend`` whose ``put``/``put_text`` are atomic."""

    def put(self, obj: bytes, filepath: Union[str, Path]) -> None:
        atomic_write_bytes(obj, filepath)

    def put_text(self, obj: str, filepath: Union[str, Path], encoding: str = 'utf-8') -> None:
        atomic_write_bytes(obj.encode(encoding), filepath)
