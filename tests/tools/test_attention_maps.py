"""tools/visualization/attention_maps.py: explicit last-layer attention and PNG overlays."""
import os.path as osp
import subprocess
import sys
from collections import OrderedDict

import cv2
import pytest
import torch
from mmpretrain.models import VisionTransformer
from testing_utils import load_tool as _load_tool  # noqa: E402

from mmselfsup_vmf.models.backbones import MaskedViT

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
TOOL = osp.join(ROOT, 'tools', 'visualization', 'attention_maps.py')
ARCH = dict(embed_dims=32, num_layers=2, num_heads=2, feedforward_channels=64)


def load_tool():
    return _load_tool(TOOL)


tool = load_tool()


def randomize(module, seed):
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.3)
    module.eval()
    return module


def test_explicit_attention_reproduces_the_last_block():
    """Re-running the last block with the returned A must give the backbone's own output:
    y = t + Proj(A V), y += FFN(LN2(y)), out = LN_final(y)."""
    vit = randomize(VisionTransformer(arch=ARCH, img_size=32, patch_size=8, out_type='raw'),
                    0)
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    attn = tool.explicit_last_selfattention(vit, x)
    assert attn.shape == (2, 2, 17, 17)
    assert torch.allclose(attn.sum(-1), torch.ones(2, 2, 17), atol=1e-6)

    vit.out_indices = [0, 1]  # tokens entering the last block, and the final output
    with torch.no_grad():
        before_last, final = vit(x)
        last = vit.layers[-1]
        qkv = last.attn.qkv(last.ln1(before_last)).reshape(2, 17, 3, 2, 16)
        v = qkv.permute(2, 0, 3, 1, 4)[2]
        y = before_last + last.attn.proj((attn @ v).transpose(1, 2).reshape(2, 17, 32))
        y = y + last.ffn.layers[1](last.ffn.layers[0](last.ln2(y)))
        assert torch.allclose(vit.ln1(y), final, atol=1e-5)


def test_maskedvit_path_matches_explicit_path_and_handles_registers():
    plain = randomize(VisionTransformer(arch=ARCH, img_size=32, patch_size=8), 2)
    masked = MaskedViT(arch=ARCH, img_size=32, patch_size=8)
    masked.load_state_dict(plain.state_dict(), strict=False)
    masked.eval()
    x = torch.randn(1, 3, 32, 32)
    maps_plain = tool.cls_attention_maps(plain, x, 8)
    maps_masked = tool.cls_attention_maps(masked, x, 8)
    assert maps_plain.shape == (2, 4, 4)
    assert torch.allclose(maps_plain, maps_masked, atol=1e-6)

    with_regs = randomize(MaskedViT(arch=ARCH, img_size=32, patch_size=8,
                                    num_register_tokens=3), 3)
    full = with_regs.get_last_selfattention(x)  # (1, heads, 1 + 3 + 16, same)
    maps = tool.cls_attention_maps(with_regs, x, 8)
    assert torch.equal(maps, full[0, :, 0, 4:].reshape(2, 4, 4))


def write_config(path, backbone_type='VisionTransformer', extra=''):
    path.write_text(
        "custom_imports = dict(imports=['mmselfsup_vmf'], allow_failed_imports=False)\n"
        'model = dict(\n'
        "    type='DINO',\n"
        f"    backbone=dict(type='{backbone_type}', arch={ARCH!r}, img_size=224,\n"
        f'                  patch_size=16{extra}),\n'
        '    data_preprocessor=dict(mean=[123.675, 116.28, 103.53],\n'
        '                           std=[58.395, 57.12, 57.375]))\n')
    return str(path)


def write_checkpoint(path, backbone, seed):
    teacher = randomize(backbone, seed)
    state = OrderedDict(('teacher.module.backbone.' + k, v)
                        for k, v in teacher.state_dict().items())
    state.update(('backbone.' + k, torch.zeros_like(v)) for k, v in teacher.state_dict().items())
    torch.save(dict(meta=dict(epoch=1), state_dict=state), path)
    return str(path), teacher


@pytest.fixture
def astronaut(tmp_path):
    skimage_data = pytest.importorskip('skimage.data', reason='needs scikit-image')
    path = tmp_path / 'astronaut.png'
    cv2.imwrite(str(path), cv2.cvtColor(skimage_data.astronaut(), cv2.COLOR_RGB2BGR))
    return str(path)


def test_pngs_of_expected_size_for_astronaut(tmp_path, astronaut):
    config = write_config(tmp_path / 'cfg.py')
    ckpt, teacher = write_checkpoint(
        tmp_path / 'ckpt.pth', VisionTransformer(arch=ARCH, img_size=224, patch_size=16), 4)
    maps, paths = tool.attention_maps(config, ckpt, astronaut, str(tmp_path / 'out'),
                                      image_size=96)
    assert maps.shape == (2, 6, 6)
    names = sorted(osp.basename(p) for p in paths)
    assert names == ['astronaut_grid.png', 'astronaut_head0.png', 'astronaut_head1.png',
                     'astronaut_mean.png']
    for p in paths:
        if not p.endswith('grid.png'):
            assert cv2.imread(p).shape == (96, 96, 3), p

    # 4 labelled panels in 2 x 2, no empty cell: input, mean, head 0, head 1, each panel the
    # image under its caption band
    grid_img = cv2.imread(osp.join(tmp_path, 'out', 'astronaut_grid.png'))
    band = grid_img.shape[0] // 2 - 96
    assert grid_img.shape == (2 * (96 + band), 2 * 96, 3) and band > 5
    _, rgb = tool.prepare_image(tool.read_rgb(astronaut), 96, 16, tool.IMAGENET_MEAN,
                                tool.IMAGENET_STD)
    panels = [cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)] + [
        cv2.imread(osp.join(tmp_path, 'out', f'astronaut_{n}.png'))
        for n in ('mean', 'head0', 'head1')]
    for i, expected in enumerate(panels):
        r, c = divmod(i, 2)
        top, left = r * (96 + band), c * 96
        caption = grid_img[top:top + band, left:left + 96]
        assert (caption < 100).any() and (caption == 255).mean() > 0.5, i  # text on white
        assert (grid_img[top + band:top + band + 96, left:left + 96] == expected).all(), i

    # The maps are the teacher's (the student weights in the file are all zeros).
    x, _ = tool.prepare_image(tool.read_rgb(astronaut), 96, 16, tool.IMAGENET_MEAN,
                              tool.IMAGENET_STD)
    assert torch.allclose(maps, tool.cls_attention_maps(teacher, x, 16), atol=1e-6)


def test_grid_has_no_empty_cell():
    # hand-listed: the smallest divisor of n that is at least sqrt(n)
    expected = {1: 1, 3: 3, 4: 2, 5: 5, 6: 3, 8: 4, 14: 7, 16: 4, 18: 6}
    assert {n: tool.grid_columns(n) for n in expected} == expected


def test_bundled_sample_photo():
    skimage_data = pytest.importorskip('skimage.data', reason='needs scikit-image')
    assert (tool.read_rgb('skimage:coffee') == skimage_data.coffee()).all()
    with pytest.raises(ValueError, match='unknown sample image skimage:nope; choose from '
                                         'skimage:astronaut'):
        tool.read_rgb('skimage:nope')


def test_maskedvit_with_registers_config_and_exported_checkpoint(tmp_path, astronaut):
    config = write_config(tmp_path / 'cfg.py', 'MaskedViT', ', num_register_tokens=2')
    backbone = MaskedViT(arch=ARCH, img_size=224, patch_size=16, num_register_tokens=2)
    ckpt, teacher = write_checkpoint(tmp_path / 'ckpt.pth', backbone, 5)
    exported = dict(state_dict=OrderedDict((k, v) for k, v in teacher.state_dict().items()
                                           if k != 'mask_token'), meta={})
    torch.save(exported, tmp_path / 'backbone.pth')
    maps_ckpt, _ = tool.attention_maps(config, ckpt, astronaut, str(tmp_path / 'a'),
                                       image_size=64)
    maps_exported, paths = tool.attention_maps(config, str(tmp_path / 'backbone.pth'),
                                               astronaut, str(tmp_path / 'b'), image_size=64)
    assert maps_ckpt.shape == (2, 4, 4)
    assert torch.allclose(maps_ckpt, maps_exported)
    assert cv2.imread(paths[0]).shape == (64, 64, 3)


def test_errors(tmp_path, astronaut):
    config = write_config(tmp_path / 'cfg.py')
    ckpt, _ = write_checkpoint(
        tmp_path / 'ckpt.pth', VisionTransformer(arch=ARCH, img_size=224, patch_size=16), 4)
    with pytest.raises(FileNotFoundError, match='image not found'):
        tool.attention_maps(config, ckpt, str(tmp_path / 'none.jpg'), str(tmp_path))
    with pytest.raises(ValueError, match='does not match'):
        tool.attention_maps(config, ckpt, astronaut, str(tmp_path), patch_size=8)
    other = write_config(tmp_path / 'other.py', extra=', qkv_bias=False')
    with pytest.raises(ValueError, match='do not fit'):
        tool.attention_maps(other, ckpt, astronaut, str(tmp_path))


def test_cli(tmp_path, astronaut, capsys):
    config = write_config(tmp_path / 'cfg.py')
    ckpt, _ = write_checkpoint(
        tmp_path / 'ckpt.pth', VisionTransformer(arch=ARCH, img_size=224, patch_size=16), 4)
    out = tmp_path / 'maps'
    run = subprocess.run([sys.executable, TOOL, config, ckpt, astronaut, '--out', str(out),
                          '--image-size', '64'], capture_output=True, text=True, cwd=ROOT,
                         timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    assert cv2.imread(str(out / 'astronaut_mean.png')).shape == (64, 64, 3)

    pytest.importorskip('skimage.data', reason='the default image needs scikit-image')
    assert tool.main([config, ckpt, '--out', str(tmp_path / 'default'), '--image-size', '32']) == 0
    assert cv2.imread(str(tmp_path / 'default' / 'astronaut_grid.png')) is not None

    assert tool.main([config, ckpt, str(tmp_path / 'none.png')]) == 1
    assert capsys.readouterr().err.startswith('error: image not found')
    with pytest.raises(SystemExit) as exit_info:
        tool.main(['--help'])
    assert exit_info.value.code == 0 and '--patch-size' in capsys.readouterr().out
