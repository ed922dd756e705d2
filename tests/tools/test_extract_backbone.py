"""tools/model_converters/extract_backbone.py: export, key layouts, official checkpoints.

References are independent of the tool: official (DINO/iBOT/DINOv2 = timm) key names and the
ViT forward pass are written out below in float64 from the papers' definitions.
"""
import argparse
import math
import os.path as osp
import subprocess
import sys
from collections import OrderedDict

import pytest
import torch
import torch.nn.functional as F
from mmengine.logging import HistoryBuffer
from mmpretrain.models import ResNet, VisionTransformer
from testing_utils import load_tool as _load_tool  # noqa: E402
from testing_utils import mmengine_messages as mmengine_warnings  # noqa: E402

from mmselfsup_vmf.models.backbones import MaskedViT

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
TOOL = osp.join(ROOT, 'tools', 'model_converters', 'extract_backbone.py')

EMBED, HEADS, DEPTH, FFN, IMG, PATCH = 32, 2, 2, 64, 32, 8
ARCH = dict(embed_dims=EMBED, num_layers=DEPTH, num_heads=HEADS, feedforward_channels=FFN)


def load_tool():
    return _load_tool(TOOL)


tool = load_tool()


def randomize(module, seed):
    """Give every parameter distinct random values (so teacher != student != init)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.2)
    module.eval()  # mmpretrain backbones' train() returns None
    return module


def tiny_vit(seed, cls=VisionTransformer, **kwargs):
    return randomize(cls(arch=ARCH, img_size=IMG, patch_size=PATCH, **kwargs), seed)


def images(seed=0, n=2):
    return torch.randn(n, 3, IMG, IMG, generator=torch.Generator().manual_seed(seed))


def cls_feature(vit, x):
    with torch.no_grad():
        return vit(x)[-1]


def our_checkpoint(teacher, student, path):
    """This project's mmengine checkpoint layout (see the brief's contract)."""
    state = OrderedDict()
    for k, v in student.state_dict().items():
        state['backbone.' + k] = v
    state['head.mlp.0.weight'] = torch.randn(16, EMBED)
    for k, v in teacher.state_dict().items():
        state['teacher.module.backbone.' + k] = v
    state['teacher.module.head.mlp.0.weight'] = torch.randn(16, EMBED)
    state['teacher.steps'] = torch.tensor(30)
    state['loss_module.center'] = torch.zeros(1, 16)
    buffer = HistoryBuffer()
    buffer.update(1.0)
    ckpt = dict(meta=dict(epoch=3, iter=30, cfg='model = dict()'), state_dict=state,
                optimizer=dict(state={}, param_groups=[]),
                message_hub=dict(log_scalars={'train/loss': buffer}))
    torch.save(ckpt, path)
    return path




# --------------------------------------------------------------------------- our layout
def test_teacher_export_loads_strictly_and_matches_teacher_features(tmp_path):
    teacher, student = tiny_vit(1), tiny_vit(2)
    ckpt = our_checkpoint(teacher, student, tmp_path / 'epoch_3.pth')
    out = tool.extract_backbone(str(ckpt), str(tmp_path / 'backbone.pth'))

    saved = torch.load(tmp_path / 'backbone.pth', map_location='cpu', weights_only=True)
    assert set(saved) == {'state_dict', 'meta'}
    assert saved['meta']['key'] == 'teacher' and saved['meta']['epoch'] == 3
    assert saved['meta']['backbone'] == 'VisionTransformer'
    assert (saved['meta']['embed_dims'], saved['meta']['num_layers'],
            saved['meta']['patch_size']) == (EMBED, DEPTH, PATCH)
    assert set(out['state_dict']) == set(teacher.state_dict())

    fresh = VisionTransformer(arch=ARCH, img_size=IMG, patch_size=PATCH)
    fresh.eval()
    result = fresh.load_state_dict(saved['state_dict'], strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    x = images()
    assert torch.allclose(cls_feature(fresh, x), cls_feature(teacher, x), atol=1e-6)
    assert not torch.allclose(cls_feature(fresh, x), cls_feature(student, x), atol=1e-3)


@pytest.mark.parametrize('prefix', ['', 'backbone.'])
def test_pretrained_init_cfg_loads_with_no_key_mismatch(tmp_path, prefix):
    teacher = tiny_vit(1)
    ckpt = our_checkpoint(teacher, tiny_vit(2), tmp_path / 'ckpt.pth')
    out = tmp_path / 'backbone.pth'
    tool.extract_backbone(str(ckpt), str(out), prefix=prefix)
    init_cfg = dict(type='Pretrained', checkpoint=str(out))
    if prefix:
        init_cfg['prefix'] = prefix
    vit = VisionTransformer(arch=ARCH, img_size=IMG, patch_size=PATCH, init_cfg=init_cfg)
    with mmengine_warnings() as messages:
        vit.init_weights()
    assert not [m for m in messages if 'do not match' in m or 'missing' in m
                or 'unexpected' in m], messages
    for k, v in teacher.state_dict().items():
        assert torch.equal(vit.state_dict()[k], v), k


def test_student_key_exports_the_student(tmp_path):
    teacher, student = tiny_vit(1), tiny_vit(2)
    ckpt = our_checkpoint(teacher, student, tmp_path / 'ckpt.pth')
    out = tool.extract_backbone(str(ckpt), str(tmp_path / 's.pth'), key='student')
    for k, v in student.state_dict().items():
        assert torch.equal(out['state_dict'][k], v), k
    assert out['meta']['key'] == 'student'


def test_mask_token_dropped_registers_kept_for_maskedvit(tmp_path):
    teacher = tiny_vit(3, cls=MaskedViT, num_register_tokens=2)
    ckpt = our_checkpoint(teacher, tiny_vit(4, cls=MaskedViT, num_register_tokens=2),
                          tmp_path / 'ckpt.pth')
    out = tool.extract_backbone(str(ckpt), str(tmp_path / 'b.pth'))
    state = out['state_dict']
    assert 'mask_token' not in state and 'register_tokens' in state
    assert out['meta']['dropped_keys'] == ['mask_token']
    assert out['meta']['num_register_tokens'] == 2

    target = MaskedViT(arch=ARCH, img_size=IMG, patch_size=PATCH, num_register_tokens=2)
    target.eval()
    result = target.load_state_dict(state, strict=False)
    assert result.missing_keys == ['mask_token'] and not result.unexpected_keys
    x = images()
    assert torch.allclose(cls_feature(target, x), cls_feature(teacher, x), atol=1e-6)

    # A plain VisionTransformer cannot use registers: they show up as unexpected (documented).
    plain = VisionTransformer(arch=ARCH, img_size=IMG, patch_size=PATCH)
    assert plain.load_state_dict(state, strict=False).unexpected_keys == ['register_tokens']
    with pytest.raises(ValueError, match='register tokens'):
        tool.extract_backbone(str(ckpt), str(tmp_path / 't.pth'), to='timm')


def test_resnet_backbone_is_exported_as_is(tmp_path):
    teacher, student = randomize(ResNet(depth=18), 5), randomize(ResNet(depth=18), 6)
    state = OrderedDict([('teacher.module.backbone.' + k, v)
                         for k, v in teacher.state_dict().items()])
    state.update(('backbone.' + k, v) for k, v in student.state_dict().items())
    torch.save(dict(meta={}, state_dict=state), tmp_path / 'r.pth')
    out = tool.extract_backbone(str(tmp_path / 'r.pth'), str(tmp_path / 'rb.pth'))
    assert out['meta']['backbone'] == 'ResNet'
    fresh = ResNet(depth=18)
    fresh.load_state_dict(out['state_dict'], strict=True)
    assert all(torch.equal(fresh.state_dict()[k], v) for k, v in teacher.state_dict().items())
    with pytest.raises(ValueError, match='ViT backbones only'):
        tool.extract_backbone(str(tmp_path / 'r.pth'), str(tmp_path / 'x.pth'), to='timm')


# --------------------------------------------------------------------------- references
def reference_vit_cls(sd, x, num_heads, ls=('ls1.gamma', 'ls2.gamma'), num_registers=0):
    """CLS output of a timm/DINO/iBOT/DINOv2-named ViT, float64, written from the paper.

    tokens = [cls + pos_0, (registers), patch_p + pos_p]; each block:
    t += gamma1 * Proj(softmax(q k^T / sqrt(d)) v) on LN1(t); t += gamma2 * MLP(LN2(t));
    output LN(t)_0.  LayerNorm eps 1e-6, exact GELU.
    """
    sd = {k: v.double() for k, v in sd.items()}
    x = x.double()
    w = sd['patch_embed.proj.weight']
    dim, patch = w.shape[0], w.shape[-1]
    t = F.conv2d(x, w, sd['patch_embed.proj.bias'], stride=patch).flatten(2).transpose(1, 2)
    t = torch.cat((sd['cls_token'].expand(len(x), -1, -1), t), dim=1) + sd['pos_embed']
    if num_registers:
        t = torch.cat((t[:, :1], sd['register_tokens'].expand(len(x), -1, -1), t[:, 1:]), 1)
    depth = 1 + max(int(k.split('.')[1]) for k in sd if k.startswith('blocks.'))
    head_dim = dim // num_heads
    for i in range(depth):
        b = f'blocks.{i}.'
        h = F.layer_norm(t, (dim, ), sd[b + 'norm1.weight'], sd[b + 'norm1.bias'], 1e-6)
        qkv = h @ sd[b + 'attn.qkv.weight'].T + sd[b + 'attn.qkv.bias']
        qkv = qkv.reshape(len(x), -1, 3, num_heads, head_dim).permute(2, 0, 3, 1, 4)
        attn = torch.softmax(qkv[0] @ qkv[1].transpose(-2, -1) / math.sqrt(head_dim), -1)
        o = (attn @ qkv[2]).transpose(1, 2).reshape(len(x), -1, dim)
        o = o @ sd[b + 'attn.proj.weight'].T + sd[b + 'attn.proj.bias']
        if b + ls[0] in sd:
            o = o * sd[b + ls[0]]
        t = t + o
        h = F.layer_norm(t, (dim, ), sd[b + 'norm2.weight'], sd[b + 'norm2.bias'], 1e-6)
        h = F.gelu(h @ sd[b + 'mlp.fc1.weight'].T + sd[b + 'mlp.fc1.bias'])
        h = h @ sd[b + 'mlp.fc2.weight'].T + sd[b + 'mlp.fc2.bias']
        if b + ls[1] in sd:
            h = h * sd[b + ls[1]]
        t = t + h
    return F.layer_norm(t, (dim, ), sd['norm.weight'], sd['norm.bias'], 1e-6)[:, 0]


def official_vit_state(seed, layer_scale=None, num_registers=0, chunks=None):
    """Random weights under the official DINO/iBOT/DINOv2 names (timm's ViT names)."""
    gen = torch.Generator().manual_seed(seed)
    shapes = {'cls_token': (1, 1, EMBED), 'pos_embed': (1, 1 + (IMG // PATCH)**2, EMBED),
              'patch_embed.proj.weight': (EMBED, 3, PATCH, PATCH),
              'patch_embed.proj.bias': (EMBED, ), 'norm.weight': (EMBED, ),
              'norm.bias': (EMBED, )}
    for i in range(DEPTH):
        b = f'blocks.{i}.'
        shapes.update({b + 'norm1.weight': (EMBED, ), b + 'norm1.bias': (EMBED, ),
                       b + 'attn.qkv.weight': (3 * EMBED, EMBED),
                       b + 'attn.qkv.bias': (3 * EMBED, ),
                       b + 'attn.proj.weight': (EMBED, EMBED), b + 'attn.proj.bias': (EMBED, ),
                       b + 'norm2.weight': (EMBED, ), b + 'norm2.bias': (EMBED, ),
                       b + 'mlp.fc1.weight': (FFN, EMBED), b + 'mlp.fc1.bias': (FFN, ),
                       b + 'mlp.fc2.weight': (EMBED, FFN), b + 'mlp.fc2.bias': (EMBED, )})
        if layer_scale:
            shapes.update({b + layer_scale[0]: (EMBED, ), b + layer_scale[1]: (EMBED, )})
    if num_registers:
        shapes['register_tokens'] = (1, num_registers, EMBED)
    state = OrderedDict((k, torch.randn(s, generator=gen) * 0.2) for k, s in shapes.items())
    for k in state:
        if k.endswith(('norm1.weight', 'norm2.weight')) or k == 'norm.weight':
            state[k] = state[k] + 1.0
    if chunks:  # DINOv2 FSDP block chunks: blocks.<chunk>.<i>.*
        per = DEPTH // chunks
        state = OrderedDict(
            (f'blocks.{int(k.split(".")[1]) // per}.{k[len("blocks."):]}'
             if k.startswith('blocks.') else k, v) for k, v in state.items())
    return state


def prefixed(state, prefix):
    return OrderedDict((prefix + k, v) for k, v in state.items())


def dino_head(prefix):
    return {prefix + 'mlp.0.weight': torch.randn(16, EMBED),
            prefix + 'last_layer.weight_g': torch.ones(8, 1)}


def official_layouts():
    """(name, checkpoint dict, key, reference state, layer-scale names, registers)."""
    t_dino, s_dino = official_vit_state(10), official_vit_state(11)
    ibot_ls = ('gamma_1', 'gamma_2')
    t_ibot = official_vit_state(12, layer_scale=ibot_ls)
    v2_ls = ('ls1.gamma', 'ls2.gamma')
    t_v2 = official_vit_state(13, layer_scale=v2_ls, num_registers=2)
    t_v2_chunked = official_vit_state(13, layer_scale=v2_ls, num_registers=2, chunks=2)
    args = argparse.Namespace(arch='vit_tiny', patch_size=PATCH)
    dino_full = {'teacher': {**prefixed(t_dino, 'backbone.'), **dino_head('head.')},
                 'student': {**prefixed(s_dino, 'module.backbone.'), **dino_head('module.head.')},
                 'epoch': 100, 'args': args}
    ibot_released = {'state_dict': {**prefixed(t_ibot, 'module.backbone.'),
                                    'module.backbone.masked_embed': torch.randn(1, EMBED)}}
    simdino_compiled = {
        'teacher': {**prefixed(t_dino, '_orig_mod.backbone.'), **dino_head('_orig_mod.head.')},
        'student': {**prefixed(s_dino, '_orig_mod.module.backbone.')}, 'args': args}
    simdinov2 = {'teacher': {**prefixed(t_v2_chunked, 'backbone.'),
                             'backbone.mask_token': torch.randn(1, EMBED),
                             **dino_head('dino_head.')}}
    return [
        ('dino-released', 'dino', dict(t_dino), 'teacher', t_dino, None, 0),
        ('dino-teacher', 'dino', dino_full, 'teacher', t_dino, None, 0),
        ('dino-student', 'dino', dino_full, 'student', s_dino, None, 0),
        ('ibot-released', 'ibot', ibot_released, 'teacher', t_ibot, ibot_ls, 0),
        ('simdino-compiled', 'simdino', simdino_compiled, 'teacher', t_dino, None, 0),
        ('simdinov2-chunked-registers', 'simdino', simdinov2, 'teacher', t_v2, v2_ls, 2),
    ]


@pytest.mark.parametrize('case', official_layouts(), ids=lambda c: c[0])
def test_official_checkpoints_convert_to_mmpretrain_vit(tmp_path, case):
    name, source, ckpt, key, ref_state, ls, num_registers = case
    torch.save(ckpt, tmp_path / 'official.pth')
    out = tool.extract_backbone(str(tmp_path / 'official.pth'), str(tmp_path / 'b.pth'),
                                key=key, source=source)
    kwargs = dict(layer_scale_init_value=0.1) if ls else {}
    if num_registers:
        vit = MaskedViT(arch=ARCH, img_size=IMG, patch_size=PATCH,
                        num_register_tokens=num_registers, **kwargs)
        result = vit.load_state_dict(out['state_dict'], strict=False)
        assert result.missing_keys == ['mask_token'] and not result.unexpected_keys
    else:
        vit = VisionTransformer(arch=ARCH, img_size=IMG, patch_size=PATCH, **kwargs)
        vit.load_state_dict(out['state_dict'], strict=True)
    vit.eval()
    x = images(seed=1)
    expected = reference_vit_cls(ref_state, x, HEADS, ls=ls or ('ls1.gamma', 'ls2.gamma'),
                                 num_registers=num_registers)
    assert torch.allclose(cls_feature(vit, x).double(), expected, atol=1e-5)
    assert out['meta']['source_format'] == source


def test_timm_export_key_table_and_numerics(tmp_path):
    teacher = tiny_vit(7, layer_scale_init_value=0.1)
    ckpt = our_checkpoint(teacher, tiny_vit(8, layer_scale_init_value=0.1),
                          tmp_path / 'c.pth')
    out = tool.extract_backbone(str(ckpt), str(tmp_path / 'timm.pth'), to='timm')
    expected_keys = {'cls_token', 'pos_embed', 'patch_embed.proj.weight',
                     'patch_embed.proj.bias', 'norm.weight', 'norm.bias'}
    for i in range(DEPTH):
        for name in ('norm1.weight', 'norm1.bias', 'attn.qkv.weight', 'attn.qkv.bias',
                     'attn.proj.weight', 'attn.proj.bias', 'ls1.gamma', 'norm2.weight',
                     'norm2.bias', 'mlp.fc1.weight', 'mlp.fc1.bias', 'mlp.fc2.weight',
                     'mlp.fc2.bias', 'ls2.gamma'):
            expected_keys.add(f'blocks.{i}.{name}')
    assert set(out['state_dict']) == expected_keys
    x = images(seed=2)
    assert torch.allclose(reference_vit_cls(out['state_dict'], x, HEADS),
                          cls_feature(teacher, x).double(), atol=1e-5)


# --------------------------------------------------------------------------- errors
def test_missing_file_error(tmp_path):
    with pytest.raises(FileNotFoundError, match='checkpoint not found: .*nope.pth'):
        tool.extract_backbone(str(tmp_path / 'nope.pth'), str(tmp_path / 'o.pth'))


def test_no_teacher_keys_error_suggests_student(tmp_path):
    student = tiny_vit(2)
    torch.save(dict(meta={}, state_dict=prefixed(student.state_dict(), 'backbone.')),
               tmp_path / 's.pth')
    with pytest.raises(ValueError, match=r'no teacher keys .*--key student'):
        tool.extract_backbone(str(tmp_path / 's.pth'), str(tmp_path / 'o.pth'))


def test_unknown_layouts(tmp_path):
    torch.save(dict(state_dict={'teacher.module.backbone.encoder.w': torch.ones(2)}),
               tmp_path / 'u.pth')
    with pytest.raises(ValueError, match='unknown backbone layout'):
        tool.extract_backbone(str(tmp_path / 'u.pth'), str(tmp_path / 'o.pth'))
    torch.save({'teacher': {'backbone.encoder.w': torch.ones(2)}}, tmp_path / 'v.pth')
    with pytest.raises(ValueError, match='unknown layout'):
        tool.extract_backbone(str(tmp_path / 'v.pth'), str(tmp_path / 'o.pth'), source='dino')
    torch.save(official_vit_state(0), tmp_path / 'dino.pth')
    with pytest.raises(ValueError, match='pass --from'):
        tool.extract_backbone(str(tmp_path / 'dino.pth'), str(tmp_path / 'o.pth'))
    with pytest.raises(ValueError, match="no 'student' entry"):
        tool.extract_backbone(str(tmp_path / 'dino.pth'), str(tmp_path / 'o.pth'),
                              key='student', source='dino')
    torch.save([1, 2], tmp_path / 'list.pth')
    with pytest.raises(ValueError, match='expected a dict'):
        tool.extract_backbone(str(tmp_path / 'list.pth'), str(tmp_path / 'o.pth'))


def test_cli(tmp_path, capsys):
    ckpt = our_checkpoint(tiny_vit(1), tiny_vit(2), tmp_path / 'c.pth')
    out = tmp_path / 'sub' / 'backbone.pth'
    run = subprocess.run([sys.executable, TOOL, str(ckpt), str(out)], capture_output=True,
                         text=True, cwd=ROOT, timeout=300)
    assert run.returncode == 0, run.stderr
    assert out.is_file() and 'teacher VisionTransformer' in run.stdout

    assert tool.main([str(tmp_path / 'missing.pth'), str(out)]) == 1
    err = capsys.readouterr().err
    assert err.startswith('error: checkpoint not found') and len(err.strip().splitlines()) == 1
    with pytest.raises(SystemExit) as exit_info:
        tool.main(['--help'])
    assert exit_info.value.code == 0 and '--from' in capsys.readouterr().out
