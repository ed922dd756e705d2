"""The two stack shims of mmselfsup_vmf.shims, against the real mmengine/mmcv/mmseg."""
import importlib.util
import sys

import numpy as np
import pytest
import torch
from mmengine.logging import HistoryBuffer
from mmengine.runner.checkpoint import CheckpointLoader, load_checkpoint

from mmselfsup_vmf import shims


def test_mmengine_checkpoints_with_pickled_objects_load(tmp_path):
    """torch >= 2.6 defaults to weights_only=True, which refuses what mmengine pickles into
    its own checkpoints (HistoryBuffer, numpy arrays); the shimmed loader reads them (with an
    allowlist: tests/test_safe_load.py)."""
    model = torch.nn.Linear(3, 2)
    path = str(tmp_path / 'ckpt.pth')
    torch.save({'state_dict': model.state_dict(),
                'message_hub': {'log_scalars': {'loss': HistoryBuffer([1.0, 2.0], [1, 1])}},
                'meta': {'arr': np.arange(3)}}, path)
    with pytest.raises(Exception):
        torch.load(path)  # the unshimmed default fails: the shim is needed
    ckpt = CheckpointLoader.load_checkpoint(path, map_location='cpu')
    assert isinstance(ckpt['message_hub']['log_scalars']['loss'], HistoryBuffer)
    other = torch.nn.Linear(3, 2)
    load_checkpoint(other, path, map_location='cpu')
    assert torch.equal(other.weight, model.weight)


def test_checkpoint_loader_names_a_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match='nope.pth'):
        CheckpointLoader.load_checkpoint(str(tmp_path / 'nope.pth'))


@pytest.mark.skipif(importlib.util.find_spec('mmcv._ext') is not None,
                    reason='full mmcv with compiled ops is installed: the ops shim is inactive')
def test_mmcv_ops_stand_in_serves_mmseg():
    import mmcv.ops
    import mmseg.models  # noqa: F401  (fails on mmcv-lite without the shim)
    from mmcv.ops import point_sample
    # the real pure-PyTorch op: sampling the centre of a 2x2 map gives the mean
    feat = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]]])
    out = point_sample(feat, torch.tensor([[[0.5, 0.5]]]), align_corners=False)
    assert out.item() == pytest.approx(2.5)
    with pytest.raises(ModuleNotFoundError) as err:
        from mmcv.ops import nms  # noqa: F401  (compiled op)
    assert err.value.name == 'mmcv._ext' and 'mmcv-lite' in str(err.value)
    with pytest.raises(NotImplementedError):
        mmcv.ops.sigmoid_focal_loss(None, None)
    assert shims.apply_mmcv_ops_shim() is False  # idempotent: already installed
    assert sys.modules['mmcv.ops'] is mmcv.ops


@pytest.mark.skipif(importlib.util.find_spec('mmcv._ext') is not None,
                    reason='full mmcv with compiled ops is installed: mmcv-lite does not warn')
def test_mmcv_lite_warning_is_silenced_by_importing_the_package():
    """Every tool imports mmselfsup_vmf before mmpretrain/mmseg models: the mmcv-lite warning
    about ``MultiScaleDeformableAttention`` no longer shows; without the package it does."""
    import os
    import subprocess
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {**os.environ, 'PYTHONPATH': root}

    def stderr(code):
        return subprocess.run([sys.executable, '-W', 'default', '-c', code], cwd=root, env=env,
                              capture_output=True, text=True, timeout=300).stderr

    assert 'rather than ``mmcv-lite``' in stderr('import mmpretrain.models')
    assert 'mmcv-lite' not in stderr('import mmselfsup_vmf, mmpretrain.models, mmseg.models')
