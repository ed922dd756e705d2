"""``prepare_distributed`` (tools/train.py): what a launch without CUDA changes in a config,
and the one-line refusals. The 2-process runs it enables are in tests/launcher/."""
import os.path as osp

import pytest
from mmengine.config import Config

from mmselfsup_vmf.engine.launch import prepare_distributed

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))


def recipe(name='dino/vit-s16_8xb64.py', launcher='pytorch'):
    cfg = Config.fromfile(osp.join(ROOT, 'configs', name))
    cfg.launcher = launcher
    return cfg


def test_a_cuda_machine_or_one_process_keeps_the_config():
    for cfg, cuda in ((recipe(), True), (recipe(launcher='none'), False)):
        before = cfg.to_dict()
        assert prepare_distributed(cfg, cuda=cuda) is None
        assert cfg.to_dict() == before


@pytest.mark.parametrize('launcher', ['slurm', 'mpi'])
def test_other_launchers_without_cuda_say_which_one_works(launcher):
    with pytest.raises(SystemExit, match=rf'^error: --launcher {launcher} needs CUDA GPUs; '
                                         r'on a machine without them use --launcher pytorch'):
        prepare_distributed(recipe(launcher=launcher), cuda=False)


def test_a_backend_that_needs_a_device_is_named():
    cfg = recipe()
    cfg.env_cfg.dist_cfg.backend = 'hccl'
    with pytest.raises(SystemExit, match=r"env_cfg.dist_cfg.backend='hccl' cannot run"):
        prepare_distributed(cfg, cuda=False)


@pytest.mark.parametrize('allow', [True, False])
def test_allow_tf32_sets_torchs_matmul_and_cudnn_flags(allow):
    import torch

    from mmselfsup_vmf.engine.launch import apply_tf32_switch
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    try:
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = not allow
        cfg = recipe()
        assert cfg.allow_tf32 is True  # the recipes' default: TF32 for fp32 matmuls
        cfg.allow_tf32 = allow
        assert apply_tf32_switch(cfg) is allow
        assert (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32) == (
            allow, allow)
        cfg = Config(cfg.to_dict() | dict(allow_tf32=None))  # unset: torch's flags stay
        assert apply_tf32_switch(cfg) is None
        assert torch.backends.cuda.matmul.allow_tf32 is allow
        cfg.allow_tf32 = 'yes'
        with pytest.raises(ValueError, match=r"^allow_tf32 must be True or False, "
                                             r"got 'yes'$"):
            apply_tf32_switch(cfg)
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved
