"""DistillOptimWrapper / AmpDistillOptimWrapper: DINO's per-tensor clipping against a hand
computation (and against mmengine's global-norm clipping, which must differ), gradient
cancellation under AdamW, and the CPU bf16 path on a real DINO model (fp16 + loss scaling:
test_amp_fp16_cpu.py)."""

import numpy as np
import pytest
import torch
from mmengine.optim import OptimWrapper
from mmpretrain.registry import MODELS
from mmpretrain.structures import DataSample

from mmselfsup_vmf.engine.optimizers import (
    AmpDistillOptimWrapper,
    DistillOptimWrapper,
    clip_grad_per_tensor_,
)

# three tensors with gradient norms 5, 0.5 and 13
GRADS = [np.array([3.0, 4.0, 0.0]), np.full((2, 2), 0.25), np.array([[5.0, -12.0]])]


def make_params():
    return [torch.nn.Parameter(torch.ones(g.shape)) for g in GRADS]


def step_with(wrapper_cls, clip_grad, lr=1.0, **kwargs):
    """One SGD(lr) step through the wrapper's update_params on a loss whose gradient is
    exactly GRADS; returns the applied update (p_before - p_after) / lr."""
    params = make_params()
    wrapper = wrapper_cls(optimizer=torch.optim.SGD(params, lr=lr), clip_grad=clip_grad,
                          **kwargs)
    loss = sum((p * torch.tensor(g, dtype=torch.float32)).sum() for p, g in zip(params, GRADS))
    wrapper.update_params(loss)
    return [(1.0 - p.detach().double().numpy()) / lr for p in params], wrapper


def test_per_tensor_clipping_matches_hand_computation():
    c = 2.0
    updates, wrapper = step_with(DistillOptimWrapper, dict(type='per_tensor', max_norm=c))
    norms = [np.linalg.norm(g) for g in GRADS]
    assert norms == pytest.approx([5.0, 0.5, 13.0])
    for upd, g, n in zip(updates, GRADS, norms):
        expected = g * min(1.0, c / (n + 1e-6))  # each tensor on its own
        np.testing.assert_allclose(upd, expected, rtol=1e-6, atol=1e-7)
        assert np.linalg.norm(upd) <= c + 1e-5
    # the small tensor is untouched, the big ones end at norm c exactly (up to 1e-6)
    np.testing.assert_allclose(updates[1], GRADS[1], rtol=1e-6)
    assert np.linalg.norm(updates[0]) == pytest.approx(c, rel=1e-5)
    assert np.linalg.norm(updates[2]) == pytest.approx(c, rel=1e-5)
    assert wrapper.message_hub.get_scalar('train/grad_norm_max').current() == \
        pytest.approx(13.0)


def test_global_norm_clipping_differs_and_is_offered_too():
    c = 2.0
    per_tensor, _ = step_with(DistillOptimWrapper, dict(type='per_tensor', max_norm=c))
    mm_global, _ = step_with(OptimWrapper, dict(max_norm=c))
    ours_global, _ = step_with(DistillOptimWrapper, dict(type='norm', max_norm=c))
    total = np.sqrt(sum((g ** 2).sum() for g in GRADS))
    coef = c / (total + 1e-6)
    for upd_mm, upd_ours, upd_pt, g in zip(mm_global, ours_global, per_tensor, GRADS):
        np.testing.assert_allclose(upd_mm, g * coef, rtol=1e-5)  # one common scale
        np.testing.assert_allclose(upd_ours, upd_mm, rtol=1e-6, atol=1e-7)
    # the small tensor: shrunk by the global rule, untouched per tensor
    assert np.abs(mm_global[1] - per_tensor[1]).max() > 0.1
    assert np.linalg.norm(np.concatenate([u.ravel() for u in mm_global])) == \
        pytest.approx(c, rel=1e-5)


def test_per_module_clipping_clips_each_module_norm_by_hand():
    """SimDINOv2 clips the backbone's and the head's norms apart: tensors 0 and 1 in
    'backbone' (norm sqrt(25 + 0.25)), tensor 2 in 'head' (norm 13)."""
    c = 2.0
    params = make_params()
    names = ['backbone.a', 'backbone.b', 'head.c']
    wrapper = DistillOptimWrapper(
        optimizer=torch.optim.SGD([dict(params=[p], param_name=n)
                                   for p, n in zip(params, names)], lr=1.0),
        clip_grad=dict(type='per_module', max_norm=c))
    wrapper.update_params(sum((p * torch.tensor(g, dtype=torch.float32)).sum()
                              for p, g in zip(params, GRADS)))
    backbone = np.sqrt(25.0 + 0.25)
    coefs = [c / (backbone + 1e-6)] * 2 + [c / (13.0 + 1e-6)]
    for p, g, coef in zip(params, GRADS, coefs):
        np.testing.assert_allclose(1.0 - p.detach().double().numpy(), g * coef, rtol=1e-6)
    assert wrapper.message_hub.get_scalar('train/grad_norm_head').current() == \
        pytest.approx(13.0)
    with pytest.raises(ValueError, match='LayerDecayOptimWrapperConstructor'):
        step_with(DistillOptimWrapper, dict(type='per_module', max_norm=c))


def test_clip_zero_or_none_disables_and_bad_keys_fail():
    for clip in (dict(type='per_tensor', max_norm=0.0), None):
        updates, _ = step_with(DistillOptimWrapper, clip)
        for upd, g in zip(updates, GRADS):
            np.testing.assert_allclose(upd, g, rtol=1e-6)
    with pytest.raises(ValueError, match='max_norm'):
        DistillOptimWrapper(optimizer=torch.optim.SGD(make_params(), lr=1.0),
                            clip_grad=dict(type='per_tensor', max_norm=1.0, norm_type=1))


def test_clip_function_returns_largest_norm():
    params = make_params()
    for p, g in zip(params, GRADS):
        p.grad = torch.tensor(g, dtype=torch.float32)
    assert clip_grad_per_tensor_(params, 100.0).item() == pytest.approx(13.0)
    assert clip_grad_per_tensor_([torch.nn.Parameter(torch.zeros(2))], 1.0) is None


def test_cancelled_gradients_skip_adamw_entirely():
    """grad=None after clipping: AdamW neither moves nor decays the frozen tensor."""
    torch.manual_seed(0)
    layer, frozen = torch.nn.Linear(4, 4), torch.nn.Linear(4, 3, bias=False)
    wrapper = DistillOptimWrapper(
        optimizer=torch.optim.AdamW(list(layer.parameters()) + list(frozen.parameters()),
                                    lr=0.1, weight_decay=0.5),
        clip_grad=dict(type='per_tensor', max_norm=1.0))
    x = torch.randn(8, 4)
    for cancel in (True, False):
        wrapper.cancel_grads_of = [frozen.weight] if cancel else []
        before = [p.detach().clone() for p in (layer.weight, layer.bias, frozen.weight)]
        wrapper.update_params(frozen(layer(x).relu()).pow(2).mean())
        after = [layer.weight, layer.bias, frozen.weight]
        assert not torch.equal(before[0], after[0]) and not torch.equal(before[1], after[1])
        assert torch.equal(before[2], after[2]) is cancel
    assert frozen.weight in wrapper.optimizer.state  # it did get state once uncancelled


def tiny_dino():
    cfg = dict(type='DINO',
               backbone=dict(type='VisionTransformer', img_size=16, patch_size=8,
                             out_type='cls_token',
                             arch=dict(embed_dims=24, num_layers=1, num_heads=2,
                                       feedforward_channels=48)),
               head=dict(type='DINOHead', in_channels=24, hidden_channels=32,
                         bottleneck_channels=16, num_prototypes=64),
               loss=dict(type='DINOLoss', num_prototypes=64, dim=16),
               data_preprocessor=dict(type='SelfSupDataPreprocessor', mean=[127.5] * 3,
                                      std=[64.0] * 3))
    model = MODELS.build(cfg)
    model.init_weights()
    return model


def test_cpu_bf16_amp_wrapper_trains_a_dino_step_with_fp32_loss():
    torch.manual_seed(0)
    model = tiny_dino()
    model.train()
    model.set_train_progress(epoch=0, iteration=0, max_iters=10)
    wrapper = AmpDistillOptimWrapper(
        optimizer=torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.04),
        dtype='bfloat16', clip_grad=dict(type='per_tensor', max_norm=0.5))
    assert wrapper.cast_dtype == torch.bfloat16
    dtypes = []
    hook = model.backbone.layers[0].attn.qkv.register_forward_hook(
        lambda m, i, o: dtypes.append(o.dtype))
    gen = torch.Generator().manual_seed(1)
    views = [torch.rand(4, 3, 16, 16, generator=gen) * 255 for _ in range(2)] + \
        [torch.rand(4, 3, 8, 8, generator=gen) * 255 for _ in range(2)]
    data = dict(inputs=views, data_samples=[DataSample() for _ in range(4)])
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    for _ in range(2):
        log_vars = model.train_step(data, wrapper)
    hook.remove()
    assert dtypes and set(dtypes) == {torch.bfloat16}  # the ViT's linears ran in bf16
    assert torch.isfinite(log_vars['loss']) and log_vars['loss'].dtype == torch.float32
    assert np.isfinite(wrapper.message_hub.get_scalar('train/grad_norm_max').current())
    changed = [n for n, p in model.named_parameters() if not torch.equal(p, before[n])]
    assert 'backbone.cls_token' in changed and 'head.mlp.0.weight' in changed
    assert any(n.startswith('teacher.') for n in changed)  # EMA update of step 2
    assert all(torch.isfinite(p).all() for p in model.parameters())



def test_the_logged_norm_is_read_only_after_the_step_is_queued():
    """On a GPU the host read of grad_norm_max waits for the queued kernels; done before the
    optimiser step it would also stall the step's launch. Record the op order of one step."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Order(TorchDispatchMode):
        ops = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.ops.append(func.name())
            return func(*args, **(kwargs or {}))

    params = make_params()
    wrapper = DistillOptimWrapper(optimizer=torch.optim.SGD(params, lr=0.1),
                                  clip_grad=dict(type='per_tensor', max_norm=2.0))
    loss = sum((p * torch.tensor(g, dtype=torch.float32)).sum() for p, g in zip(params, GRADS))
    wrapper.backward(loss)
    with Order() as order:
        wrapper.step()
    reads = [i for i, op in enumerate(order.ops) if op == 'aten::_local_scalar_dense']
    updates = [i for i, op in enumerate(order.ops) if op.startswith('aten::add_')
               or op.startswith('aten::_foreach_add_')]
    assert len(reads) == 1 and updates, order.ops
    assert reads[0] > max(updates)
