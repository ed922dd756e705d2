"""Distributed set-up that fits the machine, so the recipes launch unchanged on GPUs and CPUs.

mmengine's ``init_dist`` selects a CUDA device for every launcher and its Runner wraps the
model in ``MMDistributedDataParallel(device_ids=[LOCAL_RANK])``; both fail on a machine
without CUDA ("Found no NVIDIA driver", DDP refusing device ids for a CPU module). With
``--launcher pytorch`` (``tools/dist_train.sh``) on such a machine, ``prepare_distributed``
switches NCCL to gloo, creates the process group itself (mmengine then skips its own
``init_dist``) and wraps the model without device ids. On a CUDA machine nothing changes.
"""
import datetime
from typing import Optional

import torch
import torch.distributed as torch_dist
from mmengine.config import Config

DDP_TYPES = ('MMDistributedDataParallel', 'DistributedDataParallel')


def prepare_distributed(cfg: Config, cuda: Optional[bool] = None) -> Optional[str]:
    """Adapt ``cfg`` (in place) to a launch without CUDA; the message to log, if any."""
    launcher = cfg.get('launcher', 'none')
    cuda = torch.cuda.is_available() if cuda is None else cuda
    if launcher == 'none' or cuda:
        return None
    if launcher != 'pytorch':
        raise SystemExit(f'error: --launcher {launcher} needs CUDA GPUs; on a machine without '
                         'them use --launcher pytorch (tools/dist_train.sh CONFIG N)')
    env_cfg = cfg.setdefault('env_cfg', {})
    dist_cfg = env_cfg.setdefault('dist_cfg', {})
    backend = dist_cfg.get('backend', 'nccl')
    if backend not in ('gloo', 'nccl'):
        raise SystemExit(f"error: env_cfg.dist_cfg.backend={backend!r} cannot run without "
                         "CUDA; use 'gloo' (or leave 'nccl', which becomes gloo on CPUs)")
    dist_cfg['backend'] = 'gloo'
    if cfg.get('runner_type') is None:  # FlexibleRunner strategies wrap the model themselves
        wrapper = cfg.get('model_wrapper_cfg')
        if wrapper is None:
            cfg.model_wrapper_cfg = dict(
                type='MMDistributedDataParallel', device_ids=None, broadcast_buffers=False,
                find_unused_parameters=cfg.get('find_unused_parameters', False))
        elif wrapper.get('type', 'MMDistributedDataParallel') in DDP_TYPES:
            wrapper['device_ids'] = None
    if not torch_dist.is_initialized():
        timeout = dist_cfg.get('timeout')
        kwargs = {} if timeout is None else dict(
            timeout=datetime.timedelta(seconds=float(timeout)))
        torch_dist.init_process_group(backend='gloo', **kwargs)
    return (f'no CUDA: distributed training over gloo on the CPU with '
            f'{torch_dist.get_world_size()} processes (env_cfg.dist_cfg.backend was '
            f'{backend!r})')


def apply_tf32_switch(cfg: Config) -> Optional[bool]:
    """Set torch's TF32 flags from the config key ``allow_tf32`` (None: leave torch's defaults).

    True lets float32 matmuls and convolutions use TF32 tensor cores on Ampere and later
    GPUs (10-bit mantissa products, float32 accumulation): PyTorch's default for matmuls
    from 1.7 to 1.11 (DINO was developed on 1.7.1), and what DINOv2's ``train.py`` sets.
    False keeps strict float32. Returns the value set.
    """
    allow = cfg.get('allow_tf32')
    if allow is None:
        return None
    if not isinstance(allow, bool):
        raise ValueError(f'allow_tf32 must be True or False, got {allow!r}')
    torch.backends.cuda.matmul.allow_tf32 = allow
    torch.backends.cudnn.allow_tf32 = allow
    return allow
