"""fp16 + dynamic loss scaling on the CPU (AmpDistillOptimWrapper), against fp32 references.

For each of the six methods (its demo config's model, 8 images of 2 x 28 px + 2 x 14 px):
the dynamic scaler starts at torch's 2^16, overflows in fp16 at initialisation (the head's
bottleneck is tiny, so d loss / d z is large), halves once per skipped step and leaves the
parameters untouched until it reaches a working scale; at that scale three steps give the same
losses and clipped gradients as fp32 (same model, same data). The tolerances come from fp16's
unit roundoff (2^-11 ~ 4.9e-4) accumulated through a 4-layer ViT: measured 2-3e-3 relative on
the gradients, asserted 2e-2; losses agree to 2e-4 relative, asserted 2e-3.
"""
import copy
import os.path as osp

import pytest
import torch
from mmengine.config import Config
from mmpretrain.registry import MODELS, OPTIM_WRAPPERS
from mmpretrain.structures import DataSample

from mmselfsup_vmf.engine.optimizers import AmpDistillOptimWrapper

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
METHODS = ('dino', 'dino_vmf', 'ibot', 'ibot_vmf', 'simdino', 'simdinov2')
GRAD_RTOL, LOSS_RTOL = 2e-2, 2e-3


def demo_cfg(method):
    return Config.fromfile(osp.join(ROOT, 'configs', method, 'demo_fashion-mnist.py'))


def build_model(cfg, seed=0):
    torch.manual_seed(seed)
    model = MODELS.build(copy.deepcopy(cfg.model))
    model.init_weights()
    model.train()
    model.set_train_progress(epoch=1, iteration=0, max_iters=100)
    return model


def build_wrapper(cfg, model, **amp):
    """The demo config's wrapper (clipping, paramwise settings), fp32 or fp16."""
    wrapper_cfg = copy.deepcopy(cfg.optim_wrapper.to_dict())
    opt_cfg = wrapper_cfg.pop('optimizer')
    opt_cfg.pop('type')
    wrapper_cfg.pop('paramwise_cfg', None)
    wrapper_cfg.pop('constructor', None)
    wrapper_cfg['optimizer'] = torch.optim.AdamW(model.parameters(), **opt_cfg)
    wrapper_cfg['type'] = 'AmpDistillOptimWrapper' if amp else 'DistillOptimWrapper'
    wrapper_cfg.update(amp)
    return OPTIM_WRAPPERS.build(wrapper_cfg)


def batch(size=8, seed=0, identical=False):
    gen = torch.Generator().manual_seed(seed)
    views = [torch.rand(size, 3, 28, 28, generator=gen) * 255 for _ in range(2)] + \
        [torch.rand(size, 3, 14, 14, generator=gen) * 255 for _ in range(2)]
    if identical:  # every image the same up to 1e-3 grey levels: near-duplicate features
        views = [v[:1] + 1e-3 * torch.rand(v.shape, generator=gen) for v in views]
    return dict(inputs=views, data_samples=[DataSample() for _ in range(size)])


class StepRecorder:
    """Records the gradients the optimiser receives (after unscaling, clipping and
    cancellation: an optimiser step pre-hook; a step skipped by the scaler records nothing)."""

    def __init__(self, model, optimizer):
        self.names = {id(p): n for n, p in model.named_parameters()}
        self.grads = []
        optimizer.register_step_pre_hook(self)

    def __call__(self, optimizer, args, kwargs):
        self.grads.append({self.names[id(p)]: (None if p.grad is None else p.grad.clone())
                           for g in optimizer.param_groups for p in g['params']})


def student(model):
    return {n: p.detach().clone() for n, p in model.named_parameters()
            if not n.startswith('teacher.')}


def rel_err(a, b):
    return ((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-30)).item()


def assert_grads_close(g16, g32, where, rtol):
    assert set(g16) == set(g32)
    for name, ref in g32.items():
        if ref is None:
            assert g16[name] is None, f'{where}: {name} has a gradient in fp16 only'
            continue
        err = rel_err(g16[name], ref)
        assert err < rtol, f'{where}: {name} relative error {err:.2e}'


def fp16_vs_fp32_steps(cfg, data, steps, frozen_pattern=None, prepare=None,
                       loss_rtol=LOSS_RTOL, grad_rtol=GRAD_RTOL):
    """``steps`` fp16 training steps from torch's default dynamic scale (2^16). Before each,
    an fp32 copy of the model (same parameters, buffers, teacher, centre) computes the loss
    and the clipped gradients on the same data (optimiser lr 0: it only records). Returns
    (list of (scale before, applied), fp16 model, fp16 wrapper)."""
    model, ref = build_model(cfg), build_model(cfg)
    if prepare is not None:
        with torch.no_grad():
            prepare(model)
        model.sync_teacher()
    w16 = build_wrapper(cfg, model, dtype='float16', loss_scale='dynamic')
    w32 = build_wrapper(cfg, ref)
    for group in w32.optimizer.param_groups:
        group['lr'] = 0.0
    if frozen_pattern:
        for m, w in ((model, w16), (ref, w32)):
            w.cancel_grads_of = [p for n, p in m.named_parameters()
                                 if frozen_pattern in n and not n.startswith('teacher.')]
    rec16, rec32 = StepRecorder(model, w16.optimizer), StepRecorder(ref, w32.optimizer)
    dtypes = []
    model.backbone.layers[0].attn.qkv.register_forward_hook(
        lambda m, i, o: dtypes.append(o.dtype))
    history = []
    for step in range(steps):
        ref.load_state_dict(model.state_dict())
        torch.manual_seed(step)  # same masks / drop-path in both precisions
        loss32 = ref.train_step(copy.deepcopy(data), w32)['loss'].item()
        torch.manual_seed(step)
        scale = w16.loss_scaler.get_scale()
        before = student(model)
        loss16 = model.train_step(copy.deepcopy(data), w16)['loss'].item()
        assert w16.message_hub.get_scalar('train/loss_scale').current() == \
            w16.loss_scaler.get_scale()
        assert abs(loss16 - loss32) <= loss_rtol * max(1.0, abs(loss32)), \
            f'step {step}: fp16 loss {loss16} vs fp32 {loss32}'
        applied = len(rec16.grads) == sum(a for _, a in history) + 1
        moved = any(not torch.equal(p, before[n]) for n, p in student(model).items())
        assert moved == applied
        if applied:  # the scale is kept (it grows only after 2000 clean steps)
            assert w16.loss_scaler.get_scale() == scale
            assert_grads_close(rec16.grads[-1], rec32.grads[-1], f'step {step}', grad_rtol)
        else:  # overflow: the step is skipped, the parameters stay bit-identical
            assert w16.loss_scaler.get_scale() == scale / 2
        assert all(torch.isfinite(p).all() for p in model.parameters())
        history.append((scale, applied))
    assert dtypes and set(dtypes) == {torch.float16}  # the ViT's linears ran in fp16
    return history, model, w16, rec16


@pytest.mark.slow
@pytest.mark.parametrize('method', METHODS)
def test_fp16_with_dynamic_scaling_matches_fp32(method):
    cfg, data = demo_cfg(method), batch()
    # DINO's last-layer freezing works through the scaler too
    history, model, wrapper, rec16 = fp16_vs_fp32_steps(
        cfg, data, steps=10, frozen_pattern='last_layer')
    skipped = [s for s, applied in history if not applied]
    assert skipped and skipped[0] == 2.0 ** 16  # the default scale overflows at init
    assert sum(a for _, a in history) >= 3, history
    for grads in rec16.grads:
        assert all(g is None for n, g in grads.items() if 'last_layer' in n)
    clip = cfg.optim_wrapper.get('clip_grad') or {}
    if clip.get('type') == 'per_tensor':  # clipped after unscaling: the bound holds at 1x
        for grads in rec16.grads:
            assert max(g.norm().item() for g in grads.values() if g is not None) <= \
                clip['max_norm'] * (1 + 1e-5)


def test_bf16_and_fp16_dtypes_and_bad_dtype():
    params = [torch.nn.Parameter(torch.ones(3))]
    assert AmpDistillOptimWrapper(optimizer=torch.optim.SGD(params, lr=1.0)).cast_dtype == \
        (torch.float16 if not torch.cuda.is_available() else None)
    bf16 = AmpDistillOptimWrapper(optimizer=torch.optim.SGD(params, lr=1.0), dtype='bfloat16')
    assert bf16.cast_dtype == torch.bfloat16
    with pytest.raises(ValueError, match='optim_wrapper.dtype'):
        AmpDistillOptimWrapper(optimizer=torch.optim.SGD(params, lr=1.0), dtype='half')
    with pytest.raises(TypeError, match='loss_scale'):
        AmpDistillOptimWrapper(optimizer=torch.optim.SGD(params, lr=1.0), loss_scale='auto')


def test_static_loss_scale_is_kept_after_overflow():
    """A float loss_scale is static (mmengine's meaning): an overflow skips the step but
    the scale is reset to the given value."""
    if torch.cuda.is_available():
        pytest.skip('checks the CPU scaler')
    p = torch.nn.Parameter(torch.ones(2))
    wrapper = AmpDistillOptimWrapper(optimizer=torch.optim.SGD([p], lr=1.0), loss_scale=512.0)
    with wrapper.optim_context(torch.nn.Linear(1, 1)):
        loss = (p * torch.tensor([1e38, 1.0])).sum() * 10  # scaled gradient overflows
    wrapper.update_params(loss)
    assert torch.equal(p.detach(), torch.ones(2))
    assert wrapper.loss_scaler.get_scale() == 512.0
    wrapper.update_params((p * 2).sum())
    assert torch.allclose(p.detach(), torch.full((2,), -1.0))


# Adversarial cases. Scores are computed by the head in fp16 (as on a GPU) and rounded with
# relative error 2^-11; with teacher logits |s| / 0.04 in the hundreds this moves logits by up
# to ~0.1 nats, so these cases are compared with wider tolerances (measured: loss 5.5e-3 and
# gradients 1.7e-2 relative for the large scores; 1.2e-3 and 5.4e-3 for kappa up to 1e4).
ADVERSARIAL_LOSS_RTOL, ADVERSARIAL_GRAD_RTOL = 2e-2, 5e-2


def set_prototype_norms(norms):
    """prepare(): ||w_k|| = g_k of the weight-normalised prototype layer."""
    def prepare(model):
        g = model.head.last_layer.parametrizations.weight.original0
        g.copy_(norms(g.shape[0]).view(-1, 1))
    return prepare


def largest_head_output(model):
    seen = []
    model.teacher.module['head'].register_forward_hook(
        lambda m, i, o: seen.append(o.detach().abs().max().item()))
    return seen


@pytest.mark.slow
def test_fp16_teacher_temperature_004_with_large_scores():
    """Prototype norms 50: teacher logits |s| / 0.04 reach the hundreds (exp overflows fp16
    beyond 11). The loss maths runs in fp32, so nothing overflows in the forward; the
    backward overflows until the scaler has backed off to a scale that fits. (The head's
    prototype scores are float32 under autocast, so the overflows left are the hidden layers'.)"""
    cfg = demo_cfg('dino')
    cfg.model.head.norm_last_layer = False
    assert cfg.model.teacher_temp.start == 0.04
    history, model, _, _ = fp16_vs_fp32_steps(
        cfg, batch(), steps=16, prepare=set_prototype_norms(lambda k: torch.full((k,), 50.)),
        loss_rtol=ADVERSARIAL_LOSS_RTOL, grad_rtol=ADVERSARIAL_GRAD_RTOL)
    seen = largest_head_output(model)
    model.train_step(batch(), build_wrapper(cfg, model, dtype='float16'))
    assert max(seen) / 0.04 > 100
    assert sum(a for _, a in history) >= 3, history
    assert history[-1][0] < 2.0 ** 16  # the scaler backed off from torch's initial 2^16


@pytest.mark.slow
def test_fp16_near_duplicate_features_in_the_coding_rate():
    """All images equal up to 1e-3 grey levels: fp16 makes the features identical (rank-1
    covariance); the coding rate log det(I + a Z^T Z) stays well conditioned (>= I)."""
    history, _, _, _ = fp16_vs_fp32_steps(demo_cfg('simdino'), batch(identical=True), steps=8)
    assert sum(a for _, a in history) >= 3, history


@pytest.mark.slow
def test_fp16_very_large_kappa():
    """DINO-vMF with prototype norms log-spaced in [1, 1e4] (kappa = ||w|| / 0.1 up to 1e5):
    the scores stay below fp16's 65504, the vMF log-normaliser is evaluated in float64."""
    history, model, _, _ = fp16_vs_fp32_steps(
        demo_cfg('dino_vmf'), batch(), steps=8,
        prepare=set_prototype_norms(lambda k: torch.logspace(0, 4, k)),
        loss_rtol=ADVERSARIAL_LOSS_RTOL, grad_rtol=ADVERSARIAL_GRAD_RTOL)
    assert model.head.prototype_norms().max() > 9e3
    assert sum(a for _, a in history) >= 3, history
