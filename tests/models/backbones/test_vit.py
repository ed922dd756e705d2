"""MaskedViT: mask token, registers, LayerScale, drop-path, pos-embed resizing, attention."""
import math

import numpy as np
import pytest
import torch
from mmpretrain.models.backbones import VisionTransformer
from mmpretrain.registry import MODELS
from PIL import Image

from mmselfsup_vmf.models.backbones import MaskedViT

ARCH = dict(embed_dims=48, num_layers=2, num_heads=3, feedforward_channels=96)
PATCH = 4


def build(**kwargs):
    cfg = dict(type='MaskedViT', arch=ARCH, img_size=32, patch_size=PATCH)
    cfg.update(kwargs)
    model = MODELS.build(cfg)
    torch.manual_seed(0)
    model.init_weights()
    with torch.no_grad():  # make the zero-initialised tokens distinguishable
        model.cls_token.normal_(std=0.5)
        if model.register_tokens is not None:
            model.register_tokens.normal_(std=0.5)
        model.pos_embed.normal_(std=0.5)
    model.eval()  # mmpretrain's BaseBackbone.train returns None
    return model


def encoder_input(model, images, mask=None):
    """What the first transformer layer receives (B, L, C)."""
    captured = {}

    def hook(module, args):
        captured['x'] = args[0].detach().clone()

    handle = model.layers[0].register_forward_pre_hook(hook)
    with torch.no_grad():
        model(images, mask)
    handle.remove()
    return captured['x'].double()


def patch_embed_by_hand(model, images):
    """Conv patch embedding as a float64 matmul over flattened patches, (B, N, C)."""
    x = images.double().numpy()
    b, c, h, w = x.shape
    gh, gw = h // PATCH, w // PATCH
    patches = x.reshape(b, c, gh, PATCH, gw, PATCH).transpose(0, 2, 4, 1, 3, 5)
    patches = patches.reshape(b, gh * gw, c * PATCH * PATCH)
    weight = model.patch_embed.projection.weight.detach().double().numpy().reshape(48, -1)
    bias = model.patch_embed.projection.bias.detach().double().numpy()
    return torch.from_numpy(patches @ weight.T + bias)


def pil_bicubic_antialiased(grid, size):
    """Antialiased bicubic resize of a (h, w, C) array with PIL, channel by channel."""
    channels = [np.asarray(Image.fromarray(grid[..., k].astype(np.float32), mode='F')
                           .resize(size[::-1], Image.BICUBIC)) for k in range(grid.shape[-1])]
    return np.stack(channels, -1)


def bicubic_by_hand(grid, size, a=-0.75, offset=0.0):
    """torch-style bicubic (align_corners=False, clamped borders) of a (h, w, C) array.

    ``offset`` > 0: sampled as ``F.interpolate(scale_factor=(size + offset) / src)`` does,
    i.e. at (i + 0.5) * src / (size + offset) - 0.5 (DINO's interpolate_offset)."""
    def weights_1d(src_len, dst_len):
        mat = np.zeros((dst_len, src_len))
        for i in range(dst_len):
            pos = (i + 0.5) * src_len / (dst_len + offset) - 0.5
            base = math.floor(pos)
            t = pos - base
            for k, d in zip(range(base - 1, base + 3), (1 + t, t, 1 - t, 2 - t)):
                d = abs(d)
                wgt = ((a + 2) * d - (a + 3)) * d * d + 1 if d <= 1 else \
                    ((a * d - 5 * a) * d + 8 * a) * d - 4 * a
                mat[i, min(max(k, 0), src_len - 1)] += wgt
        return mat
    rows, cols = weights_1d(grid.shape[0], size[0]), weights_1d(grid.shape[1], size[1])
    return np.einsum('ih,jw,hwc->ijc', rows, cols, grid)


# ----------------------------------------------------------------------------- masking
def test_mask_replaces_exactly_the_masked_patch_embeddings():
    model = build()
    images = torch.randn(2, 3, 32, 32)
    mask = torch.rand(2, 8, 8) < 0.4
    tokens = encoder_input(model, images, mask)
    pos = model.pos_embed.detach().double()[0]
    embed = patch_embed_by_hand(model, images)
    mask_token = model.mask_token.detach().double().view(-1)
    flat = mask.view(2, 64)
    expected = torch.where(flat.unsqueeze(-1), mask_token, embed) + pos[1:]
    torch.testing.assert_close(tokens[:, 1:], expected, rtol=0, atol=1e-5)
    torch.testing.assert_close(tokens[:, 0], (model.cls_token.detach().double().view(-1)
                                              + pos[0]).expand(2, -1), rtol=0, atol=1e-6)
    # a (B, N) mask is the same as the (B, h, w) one; no mask leaves every patch alone
    torch.testing.assert_close(encoder_input(model, images, flat).float(), tokens.float())
    torch.testing.assert_close(encoder_input(model, images)[:, 1:], embed + pos[1:],
                               rtol=0, atol=1e-5)


def test_all_masked_input_is_mask_token_plus_pos_embed():
    model = build(num_register_tokens=2)
    tokens = encoder_input(model, torch.randn(3, 3, 32, 32), torch.ones(3, 8, 8, dtype=torch.bool))
    expected = model.mask_token.detach().double()[0] + model.pos_embed.detach().double()[0, 1:]
    torch.testing.assert_close(tokens[:, 3:], expected.expand(3, -1, -1), rtol=0, atol=1e-6)


def test_mask_token_gets_gradient_only_when_used_and_is_initialised():
    model = build()
    assert 0.005 < model.mask_token.std().item() < 0.03  # trunc_normal(0.02) over 48 values
    model.train()
    model(torch.randn(2, 3, 32, 32))[0].sum().backward()
    assert model.mask_token.grad is None or not model.mask_token.grad.any()
    model.zero_grad()
    mask = torch.zeros(2, 8, 8, dtype=torch.bool)
    mask[0, 2, 3] = True
    model(torch.randn(2, 3, 32, 32), mask)[0].sum().backward()
    assert model.mask_token.grad.abs().sum() > 0
    zero_init = MODELS.build(dict(type='MaskedViT', arch=ARCH, img_size=32, patch_size=PATCH,
                                  mask_token_std=0.0))
    zero_init.init_weights()
    assert not zero_init.mask_token.any()  # iBOT / DINOv2 leave it at zero


def test_bad_mask_raises_clear_error():
    model = build()
    with pytest.raises(ValueError, match=r'mask shape \(2, 7, 7\)'):
        model(torch.randn(2, 3, 32, 32), torch.zeros(2, 7, 7, dtype=torch.bool))
    with pytest.raises(TypeError, match='mask must be a torch.Tensor'):
        model(torch.randn(2, 3, 32, 32), np.zeros((2, 8, 8), dtype=bool))


# ----------------------------------------------------------------------------- registers
def test_registers_follow_cls_and_shift_patch_outputs():
    plain = build()
    regs = build(num_register_tokens=4, out_type='raw')
    regs.load_state_dict({**plain.state_dict(), 'register_tokens': regs.register_tokens.data})
    images = torch.randn(2, 3, 32, 32)
    tokens = encoder_input(regs, images)
    plain_tokens = encoder_input(plain, images)
    assert tokens.shape == (2, 1 + 4 + 64, 48) and regs.num_extra_tokens == 5
    torch.testing.assert_close(tokens[:, 0], plain_tokens[:, 0])
    # registers carry no position embedding
    registers = regs.register_tokens.detach().double()
    torch.testing.assert_close(tokens[:, 1:5], registers.expand(2, -1, -1))
    torch.testing.assert_close(tokens[:, 5:], plain_tokens[:, 1:])
    with torch.no_grad():
        raw = regs(images)[0]
        regs.out_type = 'featmap'
        featmap = regs(images)[0]
        regs.out_type = 'cls_token'
        cls = regs(images)[0]
    assert raw.shape == (2, 69, 48)
    torch.testing.assert_close(featmap, raw[:, 5:].reshape(2, 8, 8, 48).permute(0, 3, 1, 2))
    torch.testing.assert_close(cls, raw[:, 0])
    assert 'register_tokens' in regs.state_dict()


# ----------------------------------------------------------------------------- blocks
def test_layer_scale_and_drop_path_rates():
    model = build(arch=dict(ARCH, num_layers=4), layer_scale_init_value=0.1,
                  drop_path_rate=0.2, drop_path_uniform=True)
    for layer in model.layers:
        assert torch.equal(layer.attn.gamma1.weight.data, torch.full((48, ), 0.1))
        assert torch.equal(layer.ffn.gamma2.weight.data, torch.full((48, ), 0.1))
        assert layer.attn.out_drop.drop_prob == pytest.approx(0.2)
        assert layer.ffn.dropout_layer.drop_prob == pytest.approx(0.2)
    linear = build(arch=dict(ARCH, num_layers=4), drop_path_rate=0.3)
    rates = [layer.attn.out_drop.drop_prob for layer in linear.layers]
    np.testing.assert_allclose(rates, [0.0, 0.1, 0.2, 0.3])
    assert isinstance(linear.layers[0].attn.gamma1, torch.nn.Identity)


# ----------------------------------------------------------------------------- pos-embed
@pytest.mark.parametrize('registers', [0, 3])
def test_small_crop_uses_resized_pos_embed(registers):
    # 32 px pos-embed (8x8) on a 12 px crop (3x3), as 224 px on 96 px locals.
    model = build(num_register_tokens=registers)
    tokens = encoder_input(model, torch.randn(2, 3, 12, 12), torch.ones(2, 3, 3, dtype=torch.bool))
    pos = model.pos_embed.detach().double()[0]
    grid = pos[1:].reshape(8, 8, 48).numpy()
    mask_token = model.mask_token.detach().double().numpy()[0]
    expected = bicubic_by_hand(grid, (3, 3)).reshape(9, 48) + mask_token
    assert tokens.shape == (2, 1 + registers + 9, 48)
    np.testing.assert_allclose(tokens[0, 1 + registers:].numpy(), expected, atol=1e-5)
    np.testing.assert_allclose(tokens[0, 0].numpy(), (model.cls_token.detach().double()[0, 0]
                                                     + pos[0]).numpy(), atol=1e-6)
    # antialiased resizing (SimDINOv2) matches PIL's antialiased bicubic
    model.pos_embed_antialias = True
    tokens = encoder_input(model, torch.randn(2, 3, 12, 12), torch.ones(2, 3, 3, dtype=torch.bool))
    expected = pil_bicubic_antialiased(grid, (3, 3)).reshape(9, 48) + mask_token
    np.testing.assert_allclose(tokens[0, 1 + registers:].numpy(), expected, atol=1e-4)


def test_dino_interpolate_offset_samples_the_stretched_grid():
    """pos_embed_offset=0.1: DINO's interpolate_pos_encoding on a 3x3 local crop of an 8x8
    grid — not the same as resizing to 3x3 (the sampling points move by ~3 %)."""
    model = build(pos_embed_offset=0.1, with_mask_token=False)
    assert model.mask_token is None
    pos = model.pos_embed.detach().double()[0]
    grid = pos[1:].reshape(8, 8, 48).numpy()
    expected_pos = bicubic_by_hand(grid, (3, 3), offset=0.1).reshape(9, 48)
    images = torch.randn(2, 3, 12, 12)
    got = encoder_input(model, images)[:, 1:] - patch_embed_by_hand(model, images)
    np.testing.assert_allclose(got[0].numpy(), expected_pos, atol=1e-5)
    plain = bicubic_by_hand(grid, (3, 3)).reshape(9, 48)
    assert np.abs(expected_pos - plain).max() > 1e-2  # the switch really changes the field
    # at the training resolution nothing is interpolated
    full = torch.randn(1, 3, 32, 32)
    np.testing.assert_allclose((encoder_input(model, full)[0, 1:]
                                - patch_embed_by_hand(model, full)[0]).numpy(),
                               pos[1:].numpy(), atol=1e-5)
    with pytest.raises(ValueError, match='with_mask_token=False'):
        model(torch.randn(1, 3, 32, 32), torch.ones(1, 8, 8, dtype=torch.bool))
    with pytest.raises(ValueError, match='pos_embed_offset'):
        build(pos_embed_offset=1.5)


def test_checkpoint_pos_embed_is_resized_on_load_with_registers():
    source = build(num_register_tokens=2)
    target = MODELS.build(dict(type='MaskedViT', arch=ARCH, img_size=16, patch_size=PATCH,
                               num_register_tokens=2))
    target.load_state_dict(source.state_dict())
    assert target.pos_embed.shape == (1, 1 + 16, 48)
    torch.testing.assert_close(target.pos_embed[0, 0], source.pos_embed[0, 0])
    grid = source.pos_embed.detach().double()[0, 1:].reshape(8, 8, 48).numpy()
    np.testing.assert_allclose(target.pos_embed.detach()[0, 1:].numpy(),
                               bicubic_by_hand(grid, (4, 4)).reshape(16, 48), atol=1e-5)


# ----------------------------------------------------------------------------- parent
@pytest.mark.parametrize('out_type', ['cls_token', 'featmap', 'avg_featmap', 'raw'])
def test_state_dict_loads_into_plain_vit_with_identical_outputs(out_type):
    kwargs = dict(arch=ARCH, img_size=32, patch_size=PATCH, out_type=out_type, out_indices=[0, 1],
                  layer_scale_init_value=0.1, drop_path_rate=0.1)
    model = build(**kwargs)
    plain = VisionTransformer(**kwargs)
    plain.eval()
    state = {k: v for k, v in model.state_dict().items() if k != 'mask_token'}
    plain.load_state_dict(state, strict=True)
    for size in (32, 12):
        images = torch.randn(2, 3, size, size)
        with torch.no_grad():
            ours, theirs = model(images), plain(images)
        assert len(ours) == len(theirs) == 2
        for a, b in zip(ours, theirs):
            assert torch.equal(a, b)


def test_layer_depth_and_freezing():
    model = build(num_register_tokens=1, frozen_stages=1)
    assert model.get_layer_depth('backbone.mask_token', 'backbone.') == (0, 4)
    assert model.get_layer_depth('backbone.register_tokens', 'backbone.') == (0, 4)
    assert model.get_layer_depth('backbone.layers.1.attn.qkv.weight', 'backbone.') == (2, 4)
    assert not model.mask_token.requires_grad and not model.register_tokens.requires_grad
    assert model.layers[1].attn.qkv.weight.requires_grad


# ----------------------------------------------------------------------------- attention
def _layer_norm(x, weight, bias, eps=1e-6):
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean)**2).mean(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + eps) * weight + bias


def test_last_selfattention_matches_float64_by_hand():
    model = build(num_register_tokens=2, layer_scale_init_value=0.1)
    images = torch.randn(2, 3, 32, 32)
    mask = torch.rand(2, 8, 8) < 0.3
    attn = model.get_last_selfattention(images, mask)
    assert attn.shape == (2, 3, 67, 67)
    torch.testing.assert_close(attn.sum(-1), torch.ones(2, 3, 67), rtol=0, atol=1e-5)

    captured = {}
    last = model.layers[-1]

    def hook(module, args):
        captured['x'] = args[0].detach().double().numpy()

    handle = last.register_forward_pre_hook(hook)
    with torch.no_grad():
        model(images, mask)
    handle.remove()
    x = captured['x']
    p = {k: v.detach().double().numpy() for k, v in last.named_parameters()}
    y = _layer_norm(x, p['ln1.weight'], p['ln1.bias'])
    qkv = y @ p['attn.qkv.weight'].T + p['attn.qkv.bias']  # (B, L, 3C)
    q, k, v = (qkv[..., i * 48:(i + 1) * 48].reshape(2, 67, 3, 16).transpose(0, 2, 1, 3)
               for i in range(3))
    logits = q @ k.transpose(0, 1, 3, 2) / math.sqrt(16)
    logits -= logits.max(-1, keepdims=True)
    expected = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    np.testing.assert_allclose(attn.double().numpy(), expected, rtol=0, atol=1e-5)
    # and it is the attention the block really uses: proj(A v), LayerScaled, is attn's output
    mixed = (expected @ v).transpose(0, 2, 1, 3).reshape(2, 67, 48)
    out = (mixed @ p['attn.proj.weight'].T + p['attn.proj.bias']) * p['attn.gamma1.weight']
    with torch.no_grad():
        block_out = last.attn(last.ln1(torch.from_numpy(x).float()))
    np.testing.assert_allclose(block_out.double().numpy(), out, rtol=0, atol=1e-5)


def test_is_a_registered_vision_transformer():
    assert MODELS.get('MaskedViT') is MaskedViT and issubclass(MaskedViT, VisionTransformer)
    with pytest.raises(ValueError, match='num_register_tokens'):
        MaskedViT(arch=ARCH, img_size=32, patch_size=PATCH, num_register_tokens=-1)
