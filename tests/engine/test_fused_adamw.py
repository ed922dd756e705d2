"""The fp16 recipes' fused AdamW: the official AdamW update, and the loss scaler's overflow
check applied on the device.

References: AdamW re-derived in float64 from Loshchilov & Hutter (decoupled weight decay
``p -= lr * wd * p``, then the bias-corrected Adam step), with a different lr and weight
decay per group and per step as the schedulers set them; and a plain fp32 step without any
loss scaling (the scale is a power of two, so scaling and unscaling change no bit).
"""
import copy
import glob
import os.path as osp

import pytest
import torch
from mmengine.config import Config
from mmengine.optim import build_optim_wrapper
from mmpretrain.registry import MODELS
from torch import nn

from mmselfsup_vmf.engine.optimizers import AmpDistillOptimWrapper, DistillOptimWrapper

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
BETAS, EPS = (0.9, 0.999), 1e-8
# per step: (lr, weight decay) of the decayed group; the other group has lr x 0.2, no decay
SCHEDULE = [(1e-3, 0.04), (2e-3, 0.05), (3e-3, 0.07), (2.5e-3, 0.1), (1e-3, 0.2)]


def adamw_float64(p, grads, lrs, wds):
    """Hand-written AdamW in float64; returns the parameter and both moments."""
    p, m, v = p.double().clone(), torch.zeros_like(p, dtype=torch.float64), \
        torch.zeros_like(p, dtype=torch.float64)
    for t, (g, lr, wd) in enumerate(zip(grads, lrs, wds), start=1):
        g = g.double()
        p = p - lr * wd * p
        m = BETAS[0] * m + (1 - BETAS[0]) * g
        v = BETAS[1] * v + (1 - BETAS[1]) * g * g
        m_hat, v_hat = m / (1 - BETAS[0] ** t), v / (1 - BETAS[1] ** t)
        p = p - lr * m_hat / (v_hat.sqrt() + EPS)
    return p, m, v


@pytest.mark.parametrize('impl', ['fused', 'foreach'])
def test_fused_and_foreach_adamw_match_float64_adamw(impl):
    gen = torch.Generator().manual_seed(0)
    p0 = [torch.randn(64, generator=gen), torch.randn(8, 8, generator=gen)]
    # gradients of mixed sizes, some near eps, some large
    grads = [[torch.randn(p.shape, generator=gen) * 10.0 ** torch.randint(
        -9, 2, p.shape, generator=gen) for p in p0] for _ in SCHEDULE]
    params = [nn.Parameter(p.clone()) for p in p0]
    opt = torch.optim.AdamW([dict(params=[params[0]]), dict(params=[params[1]])],
                            betas=BETAS, eps=EPS, **{impl: True})
    for step, (lr, wd) in enumerate(SCHEDULE):
        opt.param_groups[0].update(lr=lr, weight_decay=wd)
        opt.param_groups[1].update(lr=lr * 0.2, weight_decay=0.0)
        for p, g in zip(params, grads[step]):
            p.grad = g.clone()
        opt.step()
    for i, (lr_mult, decayed) in enumerate(((1.0, True), (0.2, False))):
        ref, m, v = adamw_float64(p0[i], [g[i] for g in grads],
                                  [lr * lr_mult for lr, _ in SCHEDULE],
                                  [wd if decayed else 0.0 for _, wd in SCHEDULE])
        # float32 arithmetic on values ~1: a few ulps per step
        torch.testing.assert_close(params[i].detach().double(), ref, rtol=0, atol=2e-6)
        state = opt.state[params[i]]
        torch.testing.assert_close(state['exp_avg'].double(), m, rtol=1e-5, atol=1e-12)
        torch.testing.assert_close(state['exp_avg_sq'].double(), v, rtol=1e-5, atol=1e-20)
        assert float(state['step']) == len(SCHEDULE)


class TwoModules(nn.Module):
    """Two top-level modules, as 'backbone' and 'head' for per-module clipping."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.backbone = nn.Linear(6, 5)
        self.head = nn.Linear(5, 3)

    def forward(self, x):
        return (self.head(torch.tanh(self.backbone(x))) ** 2).sum()


def per_param_groups(model):
    """One group per parameter, named, with its own lr and weight decay (as
    LayerDecayOptimWrapperConstructor builds them)."""
    return [dict(params=[p], param_name=n, lr=1e-2 * (i + 1), weight_decay=0.05 * (i % 2))
            for i, (n, p) in enumerate(model.named_parameters())]


CLIPS = [None, dict(type='per_tensor', max_norm=0.3), dict(type='per_module', max_norm=0.3),
         dict(max_norm=0.3)]


@pytest.mark.parametrize('clip', CLIPS, ids=['none', 'per_tensor', 'per_module', 'global'])
def test_fused_fp16_scaled_step_is_the_plain_fp32_step(clip):
    """fp16 wrapper + fused AdamW (scaler's grad_scale / found_inf handed to the optimiser,
    or gradients unscaled before clipping) against fp32 + for-loop AdamW, no scaler. Step 2
    overflows: the fused step skips it on the device (no parameter or state changes) and the
    wrapper's overflow flag says so."""
    fp16_model, fp32_model = TwoModules(), TwoModules()
    w16 = AmpDistillOptimWrapper(
        torch.optim.AdamW(per_param_groups(fp16_model), fused=True), loss_scale='dynamic',
        clip_grad=copy.deepcopy(clip))
    assert w16.loss_scaler.is_enabled() and w16.optimizer._step_supports_amp_scaling
    w32 = DistillOptimWrapper(torch.optim.AdamW(per_param_groups(fp32_model), foreach=False),
                              clip_grad=copy.deepcopy(clip))
    gen = torch.Generator().manual_seed(1)
    inputs = [torch.randn(4, 6, generator=gen) for _ in range(4)]
    inputs[2][0, 0] = float('inf')
    scales, flags = [], []
    for step, x in enumerate(inputs):
        before = {n: p.detach().clone() for n, p in fp16_model.named_parameters()}
        steps_before = [float(s['step']) for s in w16.optimizer.state.values()]
        scales.append(w16.loss_scaler.get_scale())
        w16.update_params(fp16_model(x))  # fp32 forward: only the scaling differs
        flags.append(bool(w16.overflowed))
        if step == 2:
            for n, p in fp16_model.named_parameters():
                assert torch.equal(p.detach(), before[n]), n
            assert [float(s['step']) for s in w16.optimizer.state.values()] == steps_before
            continue
        w32.update_params(fp32_model(x))
        for (n, p16), p32 in zip(fp16_model.named_parameters(), fp32_model.parameters()):
            torch.testing.assert_close(p16.detach(), p32.detach(), rtol=1e-6, atol=1e-7,
                                       msg=f'step {step}: {n}')
    assert flags == [False, False, True, False]
    assert scales == [2.0 ** 16] * 3 + [2.0 ** 15]


def fp16_recipes():
    for path in sorted(glob.glob(osp.join(ROOT, 'configs', '*', 'vit-*.py'))):
        wrapper = Config.fromfile(path).optim_wrapper
        if wrapper.type == 'AmpDistillOptimWrapper' and wrapper.get('dtype') in (
                None, 'float16'):
            yield osp.relpath(path, ROOT)


def test_every_fp16_recipe_builds_a_fused_adamw():
    recipes = list(fp16_recipes())
    assert len(recipes) == 10, recipes  # DINO, DINO-vMF, iBOT, iBOT-vMF, SimDINO: S and B
    model = TwoModules()
    for path in recipes:
        cfg = Config.fromfile(osp.join(ROOT, path)).optim_wrapper
        wrapper = build_optim_wrapper(model, copy.deepcopy(cfg))
        assert wrapper.optimizer.defaults['fused'] is True, path
        assert wrapper.optimizer._step_supports_amp_scaling, path


def test_layer_decay_constructor_passes_fused():
    """SimDINOv2's constructor (bf16 recipes, no scaler) builds a fused AdamW when asked."""
    cfg = Config.fromfile(osp.join(ROOT, 'configs', 'simdinov2', 'demo_fashion-mnist.py'))
    model = MODELS.build(cfg.model)
    wrapper_cfg = copy.deepcopy(cfg.optim_wrapper)
    wrapper_cfg.optimizer.fused = True
    wrapper = build_optim_wrapper(model, wrapper_cfg)
    groups = wrapper.optimizer.param_groups
    assert len(groups) > 2 and all(g['fused'] is True for g in groups)
    assert len({g['lr'] for g in groups}) > 2  # the layer-wise lrs are kept


@pytest.mark.parametrize('saved_fused', [False, True])
def test_a_checkpoint_resumes_into_the_other_implementation(saved_fused):
    """Optimiser state saved with one implementation and loaded into the other continues
    as the saving run would (the loading wrapper keeps its own fused/foreach choice)."""
    gen = torch.Generator().manual_seed(2)
    inputs = [torch.randn(4, 6, generator=gen) for _ in range(4)]

    def wrapper(model, fused):
        return AmpDistillOptimWrapper(torch.optim.AdamW(per_param_groups(model), fused=fused),
                                      loss_scale='dynamic')

    saving, loading = TwoModules(), TwoModules()
    w_saving = wrapper(saving, saved_fused)
    for x in inputs[:2]:
        w_saving.update_params(saving(x))
    w_loading = wrapper(loading, not saved_fused)
    loading.load_state_dict(saving.state_dict())
    w_loading.load_state_dict(copy.deepcopy(w_saving.state_dict()))
    assert all(g['fused'] is (not saved_fused)
               for g in w_loading.optimizer.param_groups)
    for x in inputs[2:]:
        w_saving.update_params(saving(x))
        w_loading.update_params(loading(x))
    for (n, a), b in zip(saving.named_parameters(), loading.parameters()):
        torch.testing.assert_close(b.detach(), a.detach(), rtol=1e-6, atol=1e-7, msg=n)


def test_fsdp_scaler_with_a_fused_optimiser_is_refused(tmp_path):
    """torch's ShardedGradScaler (mmengine's ``use_fsdp``) agrees on the overflow flag over
    the ranks only in ``unscale_``, and a fused AdamW rejects the (1,)-shaped flag that
    leaves (here: unscaled for clipping); without ``unscale_`` each rank would skip on its
    own shard's flag. The wrapper refuses the pair when built. If torch's behaviour changes,
    the first half fails and the refusal can be revisited."""
    import torch.distributed as dist
    from torch.distributed.fsdp.sharded_grad_scaler import ShardedGradScaler
    dist.init_process_group('gloo', init_method=f'file://{tmp_path}/store', rank=0,
                            world_size=1)
    try:
        model = TwoModules()
        wrapper = AmpDistillOptimWrapper(torch.optim.AdamW(model.parameters(), fused=True),
                                         clip_grad=dict(type='per_tensor', max_norm=1.0))
        wrapper.loss_scaler = ShardedGradScaler('cpu')
        with pytest.raises(RuntimeError, match='shape'):
            wrapper.update_params(model(torch.ones(2, 6)))
    finally:
        dist.destroy_process_group()
    with pytest.raises(ValueError, match=r'use_fsdp=True.*optimizer.fused=False'):
        AmpDistillOptimWrapper(torch.optim.AdamW(model.parameters(), fused=True),
                               use_fsdp=True)
