"""Safe checkpoint loading. A real crafted checkpoint whose pickle runs a shell command
(``os.system('touch MARKER')``) must not run through any entry point of the stack, and must
fail with one line naming the type and the opt-in; every checkpoint kind this project writes
still loads, equal to an unrestricted ``pickle`` load."""
import functools
import http.server
import os
import os.path as osp
import threading

import numpy as np
import pytest
import torch
from mmengine.config import Config
from mmengine.logging import HistoryBuffer
from mmengine.registry import init_default_scope
from mmengine.runner import Runner
from mmengine.runner.checkpoint import _load_checkpoint, load_checkpoint
from test_resume_exact import assert_bitwise_equal
from testing_utils import ROOT, load_tool
from tiny_dino_cfg import tiny_dino_cfg
from torch.serialization import get_unsafe_globals_in_checkpoint

from mmselfsup_vmf.utils.safe_load import TRUST_ENV, UntrustedCheckpointError

METHODS = ('dino', 'dino_vmf', 'ibot', 'ibot_vmf', 'simdino', 'simdinov2')
#: What a Runner checkpoint of this project references beyond torch's own types, read off
#: the pickles with get_unsafe_globals_in_checkpoint (message hub and numpy RNG state).
WRITTEN_GLOBALS = {'builtins.getattr', 'mmengine.logging.history_buffer.HistoryBuffer',
                   'numpy.core.multiarray._reconstruct', 'numpy.core.multiarray.scalar',
                   'numpy.dtype', 'numpy.ndarray'}


class _RunsShell:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f'touch {self.marker}',))


class _Getattr:
    """A pickle that asks ``getattr`` for something other than a HistoryBuffer statistic."""

    def __reduce__(self):
        return (getattr, (HistoryBuffer, '__init__'))


@pytest.fixture
def evil(tmp_path):
    """(path, marker): a checkpoint of the tiny DINO model whose meta runs ``touch``."""
    marker = tmp_path / 'MARKER'
    path = tmp_path / 'evil.pth'
    torch.save({'meta': {'epoch': 1, 'iter': 2, 'note': _RunsShell(marker)},
                'state_dict': {'backbone.cls_token': torch.zeros(1, 1, 48)}}, path)
    return str(path), marker


def assert_refused(text, marker):
    line = str(text).strip().splitlines()[-1]
    assert 'posix.system' in line and '--trust-checkpoint' in line and TRUST_ENV in line, line
    assert not marker.exists(), 'the crafted pickle ran'


def test_the_crafted_checkpoint_runs_its_command_when_trusted(evil, monkeypatch):
    """Control: the payload is real (so its absence below means it was refused)."""
    path, marker = evil
    monkeypatch.setenv(TRUST_ENV, '1')
    _load_checkpoint(path, map_location='cpu')
    assert marker.exists()


@pytest.mark.parametrize('torch_env', [None, 'TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD'])
def test_load_checkpoint_refuses(evil, monkeypatch, torch_env):
    """Also when torch's own switch to unsafe loading is set in the environment."""
    path, marker = evil
    if torch_env:
        monkeypatch.setenv(torch_env, '1')
    with pytest.raises(UntrustedCheckpointError) as err:
        load_checkpoint(torch.nn.Linear(2, 2), path, map_location='cpu')
    assert_refused(err.value, marker)
    assert path in str(err.value)


def test_getattr_is_limited_to_history_buffer_statistics(tmp_path):
    torch.save({'x': _Getattr()}, tmp_path / 'getattr.pth')
    with pytest.raises(UntrustedCheckpointError, match=r"getattr\(HistoryBuffer, '__init__'\)"):
        _load_checkpoint(str(tmp_path / 'getattr.pth'))


@pytest.mark.parametrize('resume', [False, True], ids=['load_from', 'resume'])
def test_runner_load_from_and_resume_refuse(tmp_path, evil, resume):
    path, marker = evil
    cfg = tiny_dino_cfg(tmp_path / 'work')
    cfg.load_from, cfg.resume = path, resume
    with pytest.raises(UntrustedCheckpointError) as err:
        Runner.from_cfg(cfg).train()
    assert_refused(err.value, marker)


def test_train_tool_resume_refuses_with_one_line(tmp_path, evil, monkeypatch):
    """``SystemExit('error: ...')``: the interpreter prints that one line to stderr and exits
    with status 1, no traceback."""
    path, marker = evil
    cfg_path = tmp_path / 'tiny.py'
    tiny_dino_cfg(tmp_path / 'work').dump(str(cfg_path))
    monkeypatch.delenv(TRUST_ENV, raising=False)
    with pytest.raises(SystemExit) as exit_info:
        load_tool('tools/train.py', 'train_tool_safe_load').main([str(cfg_path), '--resume',
                                                                  path])
    message = exit_info.value.code
    assert isinstance(message, str) and message.startswith('error: ') and '\n' not in message
    assert_refused(message, marker)


def test_mmseg_init_cfg_pretrained_refuses(evil):
    from mmseg.registry import MODELS
    path, marker = evil
    cfg = Config.fromfile(osp.join(
        ROOT, 'configs', 'benchmarks', 'mmseg',
        'vit-base-p16_linear-frozen_4xb4-160k_ade20k-512x512.py'))
    cfg.model.backbone.arch = dict(embed_dims=48, num_layers=2, num_heads=3,
                                   feedforward_channels=96)
    cfg.model.backbone.out_indices = [0, 1]
    cfg.model.backbone.frozen_stages = 2
    cfg.model.backbone.init_cfg.checkpoint = path
    init_default_scope('mmseg')
    backbone = MODELS.build(cfg.model.backbone)
    with pytest.raises(UntrustedCheckpointError) as err:
        backbone.init_weights()
    assert_refused(err.value, marker)


def test_export_tool_refuses(tmp_path, evil, capsys):
    path, marker = evil
    tool = load_tool('tools/model_converters/extract_backbone.py')
    assert tool.main([path, str(tmp_path / 'out.pth')]) == 1
    assert_refused(capsys.readouterr().err, marker)
    assert not (tmp_path / 'out.pth').exists()


def test_knn_tool_refuses(evil, capsys):
    path, marker = evil
    tool = load_tool('tools/benchmarks/knn.py', 'knn_tool')
    demo = osp.join(ROOT, 'configs', 'dino', 'demo_fashion-mnist.py')
    assert tool.main([demo, path, '--no-progress']) == 1
    assert_refused(capsys.readouterr().err, marker)


def test_http_loader_refuses(tmp_path, evil, monkeypatch):
    """mmengine's http loader passes weights_only=False to torch.hub; it is refused too."""
    path, marker = evil
    monkeypatch.setenv('TORCH_HOME', str(tmp_path / 'torch_home'))
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path))
    handler.log_message = lambda *args: None
    server = http.server.ThreadingHTTPServer(('127.0.0.1', 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f'http://127.0.0.1:{server.server_address[1]}/evil.pth'
        with pytest.raises(UntrustedCheckpointError) as err:
            _load_checkpoint(url, map_location='cpu')
    finally:
        server.shutdown()
    assert_refused(err.value, marker)
    assert 'TORCH_FORCE_WEIGHTS_ONLY_LOAD' not in os.environ  # restored


# --------------------------------------------------------------------------- what still loads
@pytest.fixture(scope='module')
def runner_checkpoints(tmp_path_factory):
    """epoch_1.pth of a real Runner run of each method's demo config (64 images, 1 epoch of
    1 iteration, no k-NN): every kind of state a checkpoint holds exists after one epoch."""
    out = {}
    for method in METHODS:
        cfg = Config.fromfile(osp.join(ROOT, 'configs', method, 'demo_fashion-mnist.py'))
        cfg.train_cfg.max_epochs = 1
        cfg.train_dataloader.dataset.dataset.num_samples = 64
        cfg.train_dataloader.num_workers = 0
        cfg.train_dataloader.persistent_workers = False
        cfg.custom_hooks = [h for h in cfg.custom_hooks if h['type'] != 'KNNHook']
        cfg.visualizer.vis_backends = [dict(type='LocalVisBackend')]
        cfg.work_dir = str(tmp_path_factory.mktemp(method))
        Runner.from_cfg(cfg).train()
        out[method] = osp.join(cfg.work_dir, 'epoch_1.pth')
    return out


@pytest.mark.slow
@pytest.mark.parametrize('method', METHODS)
def test_runner_checkpoints_of_every_method_load(runner_checkpoints, method):
    path = runner_checkpoints[method]
    assert set(get_unsafe_globals_in_checkpoint(path)) <= WRITTEN_GLOBALS
    safe = _load_checkpoint(path, map_location='cpu')
    assert {'meta', 'state_dict', 'message_hub', 'optimizer', 'param_schedulers',
            'random_state'} <= set(safe)
    assert isinstance(safe['random_state'][0]['numpy'][1], np.ndarray)
    assert_bitwise_equal(safe, torch.load(path, map_location='cpu', weights_only=False))


@pytest.mark.slow
def test_exported_backbones_are_plain_tensors(runner_checkpoints, tmp_path):
    tool = load_tool('tools/model_converters/extract_backbone.py')
    out = str(tmp_path / 'backbone.pth')
    assert tool.main([runner_checkpoints['dino'], out]) == 0
    assert get_unsafe_globals_in_checkpoint(out) == []
    state = torch.load(out, map_location='cpu', weights_only=True)['state_dict']
    assert state and all(isinstance(v, torch.Tensor) for v in state.values())
