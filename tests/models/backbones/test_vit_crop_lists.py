"""All crop sizes in one backbone call (``MaskedViT`` on a list of batches, DINOv2's
``forward_features_list`` order: each block on every batch before the next block) computes
what one call per size computes, in float64, for the backbone and for every method's loss
and gradients; the blocks stay mmpretrain's (same parameters and names)."""
import copy
import os.path as osp
import sys

import pytest
import torch
from mmpretrain.models.backbones.vision_transformer import TransformerEncoderLayer
from test_vit import ARCH, build

sys.path.insert(0, osp.join(osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__)))),
                            'engine'))
from test_amp_fp16_cpu import METHODS, batch, build_model, demo_cfg  # noqa: E402


@pytest.mark.parametrize('registers', [0, 2])
@pytest.mark.parametrize('out_type', ['raw', 'cls_token', 'featmap'])
def test_a_list_of_sizes_equals_one_call_per_size(out_type, registers):
    model = build(out_type=out_type, out_indices=[0, 1], num_register_tokens=registers,
                  pos_embed_offset=0.1, layer_scale_init_value=0.1).double()
    assert all(type(layer).__mro__[1] is TransformerEncoderLayer for layer in model.layers)
    gen = torch.Generator().manual_seed(0)
    sizes = (32, 16, 24)
    images = [torch.randn(3, 3, s, s, generator=gen, dtype=torch.float64) for s in sizes]
    masks = [torch.rand(3, 8, 8, generator=gen) < 0.4, None, None]
    with torch.no_grad():
        together = model(images, mask=masks)
        apart = [model(images[0], mask=masks[0]), model(images[1]), model(images[2])]
    assert len(together) == len(sizes)
    for joint, alone in zip(together, apart):
        assert len(joint) == len(alone) == 2
        for a, b in zip(joint, alone):
            assert torch.equal(a, b)


def test_each_block_is_called_once_for_all_sizes():
    model = build(out_type='cls_token')
    calls = []
    for layer in model.layers:
        layer.register_forward_pre_hook(lambda module, args: calls.append(len(args[0])))
    with torch.no_grad():
        model([torch.randn(2, 3, 32, 32), torch.randn(2, 3, 16, 16)])
    assert calls == [2] * ARCH['num_layers']  # one call per block, with both batches


def test_mismatched_mask_list_names_the_fix():
    model = build()
    with pytest.raises(ValueError, match=r'^1 masks for 2 image batches; give one per batch'):
        model([torch.randn(1, 3, 32, 32), torch.randn(1, 3, 16, 16)], mask=[None])


@pytest.mark.parametrize('method', METHODS)
def test_every_method_gets_the_same_loss_and_gradients_as_per_size_calls(method):
    cfg = demo_cfg(method)
    backbone = cfg.model.backbone
    if backbone.type == 'VisionTransformer':  # the recipes' backbone
        backbone.update(type='MaskedViT', with_mask_token=False)
    backbone.update(drop_path_rate=0.0)  # drop-path draws follow the call order
    results = []
    for lists in (True, False):
        model = build_model(cfg).double()
        model.backbone.takes_crop_lists = lists
        model.teacher.module['backbone'].takes_crop_lists = lists
        data = copy.deepcopy(batch(seed=3))
        data['inputs'] = [v.double() for v in data['inputs']]
        data = model.data_preprocessor(data, True)
        losses = model.loss(data['inputs'], data['data_samples'])
        loss = sum(v for k, v in losses.items() if 'loss' in k)
        loss.backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        results.append((float(loss), grads))
    (loss_list, grads_list), (loss_apart, grads_apart) = results
    assert loss_list == pytest.approx(loss_apart, rel=1e-12, abs=0)
    assert grads_list.keys() == grads_apart.keys() and grads_list
    for name, g in grads_list.items():
        torch.testing.assert_close(g, grads_apart[name], rtol=1e-12, atol=1e-15, msg=name)
