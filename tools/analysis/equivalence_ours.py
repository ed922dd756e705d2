"""This project's side of ``compare_with_official.py``: a shrunk recipe through mmengine's Runner.

The recipe config is loaded as published, then shrunk (tiny ViT and head, a few epochs of a
few iterations, the schedule boundaries moved inside the run) and trained with
``Runner.train()`` and the recipe's hooks on fixed crops. A hook records, per iteration, what
the comparison needs; the optimiser's ``step`` is wrapped to read gradients and every group's
lr / weight decay at the moment of the update.
"""
import copy
import math
import tempfile

import numpy as np
import torch
from mmengine.config import Config
from mmengine.hooks import Hook
from mmengine.runner import Runner
from mmpretrain.registry import DATASETS
from mmpretrain.structures import DataSample
from mmpretrain.utils import get_ori_model

RECIPES = {m: f'configs/{m}/vit-s16_8xb64.py'
           for m in ('dino', 'dino_vmf', 'ibot', 'ibot_vmf', 'simdino')}
RECIPES['simdinov2'] = 'configs/simdinov2/vit-b16_8xb128.py'
# the shrunk run, shared with the official side
TINY = dict(embed_dims=32, num_layers=2, num_heads=2, mlp_ratio=2, patch=8, global_size=32,
            local_size=16, num_local=2, batch=4, hidden=64, bottleneck=16, prototypes=64,
            epochs=4, epoch_iters=3, warmup_epochs=2, temp_warmup_epochs=3, freeze_epochs=1)


@DATASETS.register_module(force=True)
class EquivalenceCrops(torch.utils.data.Dataset):
    """Fixed uint8 crops (2 global + ``num_local`` local per image) drawn from one seed."""

    def __init__(self, length, num_local, global_size, local_size, seed=0):
        gen = torch.Generator().manual_seed(seed)
        self.items = []
        for _ in range(length):
            views = [torch.randint(0, 256, (3, global_size, global_size), generator=gen,
                                   dtype=torch.uint8) for _ in range(2)]
            views += [torch.randint(0, 256, (3, local_size, local_size), generator=gen,
                                    dtype=torch.uint8) for _ in range(num_local)]
            self.items.append(views)

    def __len__(self):
        return len(self.items)

    def __getitem__(self, index):
        return dict(inputs=self.items[index], data_samples=DataSample())


def shrink(cfg: Config, tiny: dict, work_dir: str) -> Config:
    """The recipe with a tiny model, short epochs and boundaries inside the run."""
    t = tiny
    model = cfg.model
    model.backbone.update(arch=dict(embed_dims=t['embed_dims'], num_layers=t['num_layers'],
                                    num_heads=t['num_heads'],
                                    feedforward_channels=t['embed_dims'] * t['mlp_ratio']),
                          img_size=t['global_size'], patch_size=t['patch'],
                          drop_path_rate=0.0)  # drop-path draws differ between code bases
    model.head.update(in_channels=t['embed_dims'], hidden_channels=t['hidden'],
                      bottleneck_channels=t['bottleneck'])
    if model.head.get('num_prototypes'):
        model.head.num_prototypes = t['prototypes']
        model.loss.num_prototypes = t['prototypes']
        model.loss.dim = t['bottleneck']
    for key in ('teacher_temp', 'teacher_patch_temp'):
        if isinstance(model.get(key), dict):
            model[key].warmup_epochs = t['temp_warmup_epochs']
    if 'patch_loss' in model:  # iBOT: the shared head's prototypes
        model.patch_loss.update(num_prototypes=t['prototypes'], dim=t['bottleneck'])
    if 'patch_size' in model.data_preprocessor:  # iBOT, SimDINOv2: masks on the tiny grid
        model.data_preprocessor.patch_size = t['patch']
    warm, cos, wd = cfg.param_scheduler
    e, w = t['epochs'], t['warmup_epochs']
    warm.update(begin=0, end=w)
    cos.update(begin=w, end=e, T_max=e - w)
    wd.update(begin=0, end=e)
    cfg.train_cfg = dict(type='EpochBasedTrainLoop', max_epochs=e)
    cfg.optim_wrapper.type = 'DistillOptimWrapper'  # fp32/fp64: the comparison is not AMP
    cfg.optim_wrapper.pop('dtype', None)
    cfg.optim_wrapper.pop('loss_scale', None)
    for h in cfg.custom_hooks:  # the recipe's hooks stay
        if h['type'] == 'FreezeLastLayerHook':
            h['epochs'] = t['freeze_epochs']
    cfg.train_dataloader = dict(
        batch_size=t['batch'], num_workers=0, drop_last=True,
        sampler=dict(type='DefaultSampler', shuffle=False),
        collate_fn=dict(type='default_collate'),
        dataset=dict(type='EquivalenceCrops', length=t['batch'] * t['epoch_iters'],
                     num_local=t['num_local'], global_size=t['global_size'],
                     local_size=t['local_size']))
    cfg.default_hooks.checkpoint = None  # nothing written to disk
    cfg.default_hooks.logger = dict(type='LoggerHook', interval=1000)
    cfg.visualizer = dict(type='UniversalVisualizer', vis_backends=[])
    cfg.log_level = 'WARNING'
    cfg.work_dir = work_dir
    cfg.randomness = dict(seed=0)
    cfg.env_cfg = dict(cudnn_benchmark=False, dist_cfg=dict(backend='gloo'))
    return cfg


def _flat(params):
    return {n: p.detach().double().cpu().clone() for n, p in params}


class EquivalenceRecorder(Hook):
    """Per iteration: loss terms, lr / wd / gradient per student parameter at the optimiser
    step, the centre after the step, teacher temperature and EMA momentum of the update that
    follows the step (DINO's ``momentum_schedule[it]``)."""

    priority = 'VERY_LOW'

    def __init__(self, perturb=None):
        self.rows, self.inputs, self.masks, self.initial = [], [], [], None
        self.perturb = perturb or {}

    def before_train(self, runner):
        model = get_ori_model(runner.model)
        self.initial = _flat(model._student_modules().named_parameters())
        names = {id(p): n for n, p in model._student_modules().named_parameters()}
        optim = runner.optim_wrapper.optimizer
        inner_step = optim.step

        def step(*args, **kwargs):
            row = self.rows[-1]
            for group in optim.param_groups:
                for p in group['params']:
                    n = names[id(p)]
                    row['lr'][n], row['wd'][n] = group['lr'], group['weight_decay']
                    row['grad'][n] = (None if p.grad is None
                                      else p.grad.detach().double().clone())
            return inner_step(*args, **kwargs)
        optim.step = step
        pre = model.data_preprocessor
        inner_pre = pre.forward
        dtype = next(model.parameters()).dtype

        def preprocess(data, training=False):
            out = inner_pre(data, training)
            out['inputs'] = [x.to(dtype) for x in out['inputs']]
            if training:
                self.inputs.append([x.detach().clone() for x in out['inputs']])
                if model.global_masks(out['data_samples']) is not None:
                    self.masks.append(model.global_masks(out['data_samples']))
            return out
        pre.forward = preprocess

    def before_train_iter(self, runner, batch_idx, data_batch=None):
        it = runner.iter
        self.rows.append(dict(lr={}, wd={}, grad={}))
        if self.perturb.get('lr_at') == it:  # self-test: a wrong lr at one iteration
            for group in runner.optim_wrapper.param_groups:
                group['lr'] *= 1.001

    def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None):
        model = get_ori_model(runner.model)
        row = self.rows[-1]
        row['loss'] = {k: float(v.detach()) for k, v in outputs.items()
                       if k.startswith('loss')}
        values = model.schedule_values()
        if 'teacher_temp' in values and getattr(model.loss_module, 'center', None) is not None:
            row['teacher_temp'] = values['teacher_temp']
            row['center'] = model.loss_module.center.center.detach().double().clone()
        if 'teacher_patch_temp' in values:
            row['teacher_patch_temp'] = values['teacher_patch_temp']
            row['center2'] = model.patch_loss_module.center.center.detach().double().clone()
        ema = model.teacher
        row['momentum'] = 1.0 - ema.update_weight(int(ema.steps))  # the next update


def run_ours(method: str, root: str, float64: bool = True, perturb=None, tiny=TINY,
             loss_overrides=None):
    """Train the shrunk recipe; returns the trace and the fixed inputs per iteration."""
    cfg = Config.fromfile(f'{root}/{RECIPES[method]}')
    for key in ('loss', 'patch_loss'):  # the vMF switches of both iBOT-vMF terms
        if key in cfg.model:
            cfg.model[key].update(loss_overrides or {})
    if perturb and 'center_momentum' in perturb:
        cfg.model.loss.center_momentum = perturb['center_momentum']
    with tempfile.TemporaryDirectory() as work_dir:
        cfg = shrink(cfg, tiny, work_dir)
        recipe = copy.deepcopy(cfg)
        runner = Runner.from_cfg(cfg)
        if float64:
            runner.model.double()
        recorder = EquivalenceRecorder(perturb)
        runner.register_hook(recorder)
        runner.train()
        model = get_ori_model(runner.model)
        student = _flat(model._student_modules().named_parameters())
        model.update_teacher()  # DINO updates the teacher after the last step too
        teacher = _flat(model.teacher.module.named_parameters())
    return dict(rows=recorder.rows, inputs=recorder.inputs, masks=recorder.masks,
                initial=recorder.initial,
                student=student, teacher=teacher, recipe=recipe)


def relative_gap(a, b) -> float:
    """max |a - b| / max(max |b|, 1e-30): arrays, scalars or None (None == None)."""
    if a is None or b is None:
        return 0.0 if a is None and b is None else math.inf
    a = torch.as_tensor(a, dtype=torch.float64)
    b = torch.as_tensor(b, dtype=torch.float64)
    if a.shape != b.shape:
        if a.numel() != b.numel():
            return math.inf
        a = a.reshape(b.shape)
    scale = max(float(b.abs().max()) if b.numel() else 0.0, 1e-30)
    return float((a - b).abs().max()) / scale if a.numel() else 0.0


def gaps(ours: dict, ref: dict, name_map: dict):
    """(iteration, quantity, relative gap) in the order the run produced them; the final
    weights come last with iteration = number of iterations."""
    for it, (a, b) in enumerate(zip(ours['rows'], ref['rows'])):
        for term, value in b['loss'].items():
            yield it, f'loss:{term}', relative_gap(a['loss'].get(term), value)
        for key in ('teacher_temp', 'teacher_patch_temp', 'momentum', 'center', 'center2'):
            if key in b:
                yield it, key, relative_gap(a.get(key), b[key])
        for key in ('lr', 'wd', 'grad'):
            for ours_name, ref_name in name_map.items():
                yield it, f'{key}:{ours_name}', relative_gap(a[key].get(ours_name),
                                                             b[key].get(ref_name))
    end = min(len(ours['rows']), len(ref['rows']))
    if len(ours['rows']) != len(ref['rows']):
        yield end, 'iterations', math.inf
    for part in ('student', 'teacher'):
        for ours_name, ref_name in name_map.items():
            if ref_name not in ref[part]:  # iBOT's teacher has no mask embedding
                continue
            yield end, f'{part}:{ours_name}', relative_gap(ours[part][ours_name],
                                                           ref[part][ref_name])


def compare_traces(ours: dict, ref: dict, name_map: dict, tolerance):
    """Largest gap per iteration and quantity kind, and the first gap over ``tolerance`` (one
    number, or a dict kind -> number).

    Returns (per_iteration, first_failure): per_iteration[it][kind] is the largest gap of
    that kind ('loss', 'lr', 'grad', ..., 'student', 'teacher') in iteration ``it``;
    first_failure is None or (iteration, quantity, gap)."""
    per_iteration, failure = {}, None
    for it, quantity, gap in gaps(ours, ref, name_map):
        kind = quantity.split(':')[0]
        row = per_iteration.setdefault(it, {})
        row[kind] = max(row.get(kind, 0.0), gap)
        limit = tolerance[kind] if isinstance(tolerance, dict) else tolerance
        if failure is None and not gap <= limit:
            failure = (it, quantity, gap)
    return per_iteration, failure


def identity_map(names) -> dict:
    return {n: n for n in names}


def numpy_inputs(inputs):
    return [[np.asarray(x) for x in views] for views in inputs]
