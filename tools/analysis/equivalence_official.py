"""The official side of ``compare_with_official.py``: their ``train_one_epoch``, on a CPU.

Nothing of the official code is copied: it is imported from the user's checkout at run time
(``main_dino.py``, ``utils.py``, ``vision_transformer.py`` of facebookresearch/dino or
RobinWu218/SimDINO ``simdino/``; ``main_ibot.py``, ``utils.py``, ``models/`` of bytedance/ibot).
Their set-up (``train_dino`` / ``train_ibot``) reads ImageNet and calls ``.cuda()``, so the
objects it builds are built here with their own classes and functions in the same order
(``MultiCropWrapper``, ``DINOHead`` / ``iBOTHead``, ``DINOLoss`` / ``MCRLoss`` / ``iBOTLoss``,
``get_params_groups``, ``cosine_scheduler``, DDP over a one-process gloo group); then their
``train_one_epoch`` runs unchanged, with ``.cuda()`` and ``torch.cuda.synchronize`` made no-ops.
"""
import argparse
import contextlib
import importlib
import importlib.util
import io
import os
import re
import socket
import sys
import types
from functools import partial

import torch
import torch.distributed as dist
from torch import nn

# this project's parameter names -> the official ones (backbone and head of a DINO-style ViT)
NAME_RULES = [
    (r'^backbone\.patch_embed\.projection\.', 'backbone.patch_embed.proj.'),
    (r'^backbone\.layers\.(\d+)\.ln1\.', r'backbone.blocks.\1.norm1.'),
    (r'^backbone\.layers\.(\d+)\.ln2\.', r'backbone.blocks.\1.norm2.'),
    (r'^backbone\.layers\.(\d+)\.attn\.', r'backbone.blocks.\1.attn.'),
    (r'^backbone\.layers\.(\d+)\.ffn\.layers\.0\.0\.', r'backbone.blocks.\1.mlp.fc1.'),
    (r'^backbone\.layers\.(\d+)\.ffn\.layers\.1\.', r'backbone.blocks.\1.mlp.fc2.'),
    (r'^backbone\.ln1\.', 'backbone.norm.'),
    (r'^backbone\.mask_token$', 'backbone.masked_embed'),  # iBOT
    (r'^head\.last_layer\.parametrizations\.weight\.original0$', 'head.last_layer.weight_g'),
    (r'^head\.last_layer\.parametrizations\.weight\.original1$', 'head.last_layer.weight_v'),
]


def official_name(name: str) -> str:
    for pattern, repl in NAME_RULES:
        if re.search(pattern, name):
            return re.sub(pattern, repl, name)
    return name


def checked_name_map(ours: dict, official: nn.Module, rename=official_name) -> dict:
    """The explicit map, asserted one-to-one and size-preserving over all parameters."""
    theirs = {n: p.shape for n, p in official.named_parameters()}
    mapping = {n: rename(n) for n in ours}
    missing = sorted(set(theirs) - set(mapping.values()))
    unknown = sorted(n for n, m in mapping.items() if m not in theirs)
    if missing or unknown or len(set(mapping.values())) != len(mapping):
        raise SystemExit(f'parameter-name map is not one-to-one: ours without an official '
                         f'match {unknown}, official without ours {missing}')
    for n, m in mapping.items():  # iBOT's mask embedding is (1, C), ours (1, 1, C)
        if ours[n].numel() != theirs[m].numel():
            raise SystemExit(f'{n} {tuple(ours[n].shape)} != official {m} {tuple(theirs[m])}')
    return mapping


def import_official(path: str, module: str):
    """``module`` from the checkout at ``path`` (their ``import utils`` needs it on sys.path)."""
    if not os.path.isfile(os.path.join(path, f'{module}.py')):
        raise SystemExit(f'{path}/{module}.py not found: pass the checkout directory that '
                         f'holds {module}.py (for SimDINO: <checkout>/simdino)')
    for name in [m for m in sys.modules if m.split('.')[0] in (
            'utils', 'vision_transformer', 'models', 'loader', 'evaluation', module)]:
        sys.modules.pop(name, None)  # another checkout's modules of the same names
    sys.path.insert(0, os.path.abspath(path))
    # logging-only imports (SimDINO: wandb; iBOT: tensorboardX, munkres), never called here
    for name, attr in (('wandb', None), ('tensorboardX', 'SummaryWriter'),
                       ('munkres', 'Munkres')):
        if name not in sys.modules and importlib.util.find_spec(name) is None:
            sys.modules[name] = types.ModuleType(name)
            if attr:
                setattr(sys.modules[name], attr, None)
    try:
        return import_with_dependencies(module, f'{path}/{module}.py', 'iBOT: timm')
    finally:
        sys.path.pop(0)


def import_with_dependencies(module: str, where: str, dependencies: str):
    """``importlib.import_module(module)``; a missing dependency of the official code is one
    line naming it and the fix."""
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as err:
        raise SystemExit(f'{where} needs {err.name!r}, a dependency of the official code '
                         f'({dependencies}); install it (pip install {err.name}) or put it '
                         'on PYTHONPATH') from err


def init_one_process_group() -> None:
    if dist.is_initialized():
        return
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        port = s.getsockname()[1]
    dist.init_process_group('gloo', init_method=f'tcp://127.0.0.1:{port}', rank=0,
                            world_size=1)


@contextlib.contextmanager
def cpu_only():
    """``.cuda()`` returns its argument and ``torch.cuda.synchronize`` does nothing."""
    saved = torch.Tensor.cuda, nn.Module.cuda, torch.cuda.synchronize
    torch.Tensor.cuda = lambda self, *a, **k: self
    nn.Module.cuda = lambda self, *a, **k: self
    torch.cuda.synchronize = lambda *a, **k: None
    try:
        yield
    finally:
        torch.Tensor.cuda, nn.Module.cuda, torch.cuda.synchronize = saved


def record_at_step(optimizer, names: dict, rows: list) -> None:
    """Wraps ``optimizer.step``: lr, weight decay and gradient of every parameter (by
    ``names[id(p)]``) into ``rows[-1]`` at the moment of the update."""
    inner_step = optimizer.step

    def step(*a, **k):
        row = rows[-1]
        for group in optimizer.param_groups:
            for p in group['params']:
                n = names[id(p)]
                row['lr'][n], row['wd'][n] = group['lr'], group['weight_decay']
                row['grad'][n] = None if p.grad is None else p.grad.detach().double().clone()
        return inner_step(*a, **k)
    optimizer.step = step


def _flat(params):
    return {n: p.detach().double().cpu().clone() for n, p in params}


def _models(method, main, t, cfg, dtype):
    """Student and teacher ``MultiCropWrapper``s built with the official classes."""
    utils = sys.modules['utils']
    K = t['prototypes']
    vit_kwargs = dict(img_size=[t['global_size']], patch_size=t['patch'],
                      embed_dim=t['embed_dims'], depth=t['num_layers'],
                      num_heads=t['num_heads'], mlp_ratio=t['mlp_ratio'], qkv_bias=True,
                      norm_layer=partial(nn.LayerNorm, eps=1e-6), drop_path_rate=0.0)
    head_kwargs = dict(hidden_dim=t['hidden'], bottleneck_dim=t['bottleneck'])
    norm_last = cfg.model.head.get('norm_last_layer', True)
    if method == 'ibot':  # main_ibot.py: all tokens out, the student masks, heads shared
        vit = partial(sys.modules['models'].vision_transformer.VisionTransformer,
                      return_all_tokens=True, **vit_kwargs)
        head = partial(main.iBOTHead, t['embed_dims'], K, patch_out_dim=K, norm=None,
                       act='gelu', shared_head=True, **head_kwargs)
        student = utils.MultiCropWrapper(vit(masked_im_modeling=True),
                                         head(norm_last_layer=norm_last))
        teacher = utils.MultiCropWrapper(vit(), head())
    else:
        vit = partial(sys.modules['vision_transformer'].VisionTransformer, **vit_kwargs)
        student = utils.MultiCropWrapper(vit(), main.DINOHead(
            t['embed_dims'], K, norm_last_layer=norm_last, **head_kwargs))
        teacher = utils.MultiCropWrapper(vit(), main.DINOHead(t['embed_dims'], K,
                                                              **head_kwargs))
    return student.to(dtype), teacher.to(dtype)


def _loss(method, main, t, cfg, dtype):
    loss_cfg, epochs, ncrops = cfg.model.loss, t['epochs'], 2 + t['num_local']
    temp = cfg.model.get('teacher_temp')
    if method == 'simdino':
        expa = {'global': 0, 'mean': 1}[loss_cfg.expa_type]
        loss_fn = main.MCRLoss(ncrops, int(loss_cfg.reduce_cov), expa, loss_cfg.eps,
                               loss_cfg.coeff)
    elif method == 'ibot':
        patch_temp, patch_cfg = cfg.model.teacher_patch_temp, cfg.model.patch_loss
        loss_fn = main.iBOTLoss(
            t['prototypes'], t['prototypes'], 2, t['num_local'], temp.start, temp.end,
            patch_temp.start, patch_temp.end, temp.warmup_epochs, epochs,
            student_temp=loss_cfg.student_temp, center_momentum=loss_cfg.center_momentum,
            center_momentum2=patch_cfg.center_momentum, lambda1=cfg.model.lambda_cls,
            lambda2=cfg.model.lambda_patch,
            mim_start_epoch=cfg.model.data_preprocessor.mask_start_epoch)
    else:
        loss_fn = main.DINOLoss(t['prototypes'], ncrops, temp.start, temp.end,
                                temp.warmup_epochs, epochs, student_temp=loss_cfg.student_temp,
                                center_momentum=loss_cfg.center_momentum)
    return loss_fn.to(dtype)


def _loss_row(method, loss_fn, out, epoch, coeff):
    """The loss terms under our names, and the loss module's temperatures and centres."""
    if method == 'simdino':
        loss, comp, expa = out
        return dict(loss=dict(loss=loss.item(), loss_comp=-coeff * comp.item(),
                              loss_expa=-expa.item()))
    row = dict(teacher_temp=float(loss_fn.teacher_temp_schedule[epoch]),
               center=loss_fn.center.detach().double().flatten().clone())
    if method == 'ibot':
        row['loss'] = dict(loss=out['loss'].item(), loss_dino=out['cls'].item(),
                           loss_patch=out['patch'].item())
        row['teacher_patch_temp'] = float(loss_fn.teacher_temp2_schedule[epoch])
        row['center2'] = loss_fn.center2.detach().double().flatten().clone()
    else:
        row['loss'] = dict(loss=out.item(), loss_dino=out.item())
    return row


def run_official(path: str, method: str, ours: dict, tiny: dict, float64: bool = True,
                 adamw=None):
    """Their loop on our initial weights and inputs; a trace in ``run_ours``' format.

    ``method``: 'dino' (facebookresearch/dino), 'simdino' (SimDINO/simdino) or 'ibot'
    (bytedance/ibot)."""
    main = import_official(path, 'main_ibot' if method == 'ibot' else 'main_dino')
    utils = sys.modules['utils']
    init_one_process_group()
    dtype = torch.float64 if float64 else torch.float32
    cfg, t = ours['recipe'], tiny
    student, teacher = _models(method, main, t, cfg, dtype)
    name_map = checked_name_map(ours['initial'], student)
    state = student.state_dict()
    for n, m in name_map.items():
        state[m] = ours['initial'][n].to(dtype).reshape(state[m].shape)
    student.load_state_dict(state)
    student = nn.parallel.DistributedDataParallel(student)
    teacher.load_state_dict(student.module.state_dict(), strict=method != 'ibot')
    for p in teacher.parameters():
        p.requires_grad = False

    epochs, n_iter = t['epochs'], t['epoch_iters']
    loss_fn = _loss(method, main, t, cfg, dtype)
    optimizer = torch.optim.AdamW(utils.get_params_groups(student), **(adamw or {}))
    opt = cfg.optim_wrapper.optimizer
    warm, cos, wd = cfg.param_scheduler
    lr_schedule = utils.cosine_scheduler(opt.lr * t['batch'] / 256., cos.eta_min, epochs,
                                         n_iter, warmup_epochs=t['warmup_epochs'])
    wd_schedule = utils.cosine_scheduler(opt.weight_decay, opt.weight_decay * wd.eta_min_ratio,
                                         epochs, n_iter)
    momentum_schedule = utils.cosine_scheduler(cfg.model.teacher_momentum, 1, epochs, n_iter)
    clip = (cfg.optim_wrapper.get('clip_grad') or {}).get('max_norm', 0.0)
    freeze = next((h['epochs'] for h in cfg.custom_hooks
                   if h['type'] == 'FreezeLastLayerHook'), 0)
    args = argparse.Namespace(epochs=epochs, clip_grad=clip, freeze_last_layer=freeze,
                              use_simdino=method == 'simdino', enable_logging=False,
                              global_crops_number=2, use_masked_im_modeling=True)

    rows, names = [], {id(p): n for n, p in student.module.named_parameters()}
    state = dict(it=-1, epoch=0)
    inner_loss = loss_fn.forward

    def loss_forward(*a):
        state['it'] += 1
        out = inner_loss(*a)
        row = dict(lr={}, wd={}, grad={}, momentum=float(momentum_schedule[state['it']]))
        row.update(_loss_row(method, loss_fn, out, state['epoch'],
                             cfg.model.loss.get('coeff', 1.0)))
        rows.append(row)
        return out
    loss_fn.forward = loss_forward
    record_at_step(optimizer, names, rows)

    # their MetricLogger gathers its (logging-only) averages on 'cuda' at each epoch end
    utils.is_dist_avail_and_initialized = lambda: False
    with cpu_only(), contextlib.redirect_stdout(io.StringIO()):
        for epoch in range(epochs):
            state['epoch'] = epoch
            batches = []
            for i in range(epoch * n_iter, (epoch + 1) * n_iter):
                if method == 'ibot':  # (crops, labels for their logging, global masks)
                    batches.append((ours['inputs'][i], torch.zeros(t['batch'], dtype=torch.long),
                                    ours['masks'][i]))
                else:
                    batches.append((ours['inputs'][i], None))
            main.train_one_epoch(student, teacher, teacher, loss_fn, batches, optimizer,
                                 lr_schedule, wd_schedule, momentum_schedule, epoch, None,
                                 args)
    trace = dict(rows=rows, student=_flat(student.module.named_parameters()),
                 teacher=_flat(teacher.named_parameters()))
    return trace, name_map
