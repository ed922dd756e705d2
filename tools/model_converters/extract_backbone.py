"""Extract backbone-only weights from a pre-training checkpoint (teacher by default).

Inputs
  * this project's mmengine checkpoints: ``state_dict`` holds the student as ``backbone.*``
    and the EMA teacher as ``teacher.module.backbone.*`` (plus heads, ``teacher.steps``,
    loss buffers ...);
  * with ``--from dino|ibot|simdino``: the official repositories' ViT checkpoints, either a
    bare backbone (``cls_token``, ``blocks.N.*`` ...), a full training checkpoint with
    ``teacher`` / ``student`` dicts (``backbone.*``, ``module.backbone.*``, and for SimDINO's
    ``torch.compile``-d models ``_orig_mod.*``), or iBOT's ``{'state_dict': ...}`` files.
    DINOv2-style keys (``blocks.C.N`` chunks, ``ls1.gamma``, ``register_tokens``) are read
    too, for SimDINOv2.

Output: ``{'state_dict': ..., 'meta': {...}}`` (tensors and plain python values only: it
loads with ``torch.load(weights_only=True)`` and no allowlist).

Loading never runs code from the input: it is read with ``weights_only=True`` and the
allowlist of ``mmselfsup_vmf/utils/safe_load.py`` (plus ``argparse.Namespace`` for the
official training checkpoints' ``args``); ``--trust-checkpoint`` lifts that for a file you
trust.
  * ``--to mmpretrain`` (default): mmpretrain ``VisionTransformer`` / ``ResNet`` keys, so
    ``init_cfg=dict(type='Pretrained', checkpoint=OUT)`` loads it with no missing or
    unexpected keys; pass ``--prefix backbone.`` for configs that load with
    ``prefix='backbone.'``.  ``mask_token`` is dropped (it is only used in pre-training).
    ``register_tokens`` are kept: only ``MaskedViT(num_register_tokens=R)`` loads them; a
    plain ``VisionTransformer`` reports them as unexpected and runs without registers.
  * ``--to timm``: timm's ViT keys, mapping table ``MMPRETRAIN_TO_TIMM`` below (ViT only,
    no registers).

Usage: python tools/model_converters/extract_backbone.py CKPT OUT [--key teacher|student]
           [--to mmpretrain|timm] [--from dino|ibot|simdino] [--prefix backbone.]
           [--trust-checkpoint]
"""
import argparse
import os
import os.path as osp
import re
import sys
from collections import OrderedDict
from typing import List, Optional, Tuple

import torch

sys.path.insert(0, osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__)))))  # checkout
from mmselfsup_vmf.utils import safe_load  # noqa: E402

# --------------------------------------------------------------------------- key tables
#: mmpretrain ViT key -> timm ViT key. ``{i}`` is a block index, ``{p}`` weight|bias.
#: DINO, iBOT and DINOv2 (SimDINO v1/v2) name their ViT like timm, so the same table
#: converts the official checkpoints (read right to left).
MMPRETRAIN_TO_TIMM: List[Tuple[str, str]] = [
    ('cls_token', 'cls_token'),
    ('pos_embed', 'pos_embed'),
    ('patch_embed.projection.{p}', 'patch_embed.proj.{p}'),
    ('pre_norm.{p}', 'norm_pre.{p}'),
    ('layers.{i}.ln1.{p}', 'blocks.{i}.norm1.{p}'),
    ('layers.{i}.attn.qkv.{p}', 'blocks.{i}.attn.qkv.{p}'),
    ('layers.{i}.attn.proj.{p}', 'blocks.{i}.attn.proj.{p}'),
    ('layers.{i}.attn.gamma1.weight', 'blocks.{i}.ls1.gamma'),
    ('layers.{i}.ln2.{p}', 'blocks.{i}.norm2.{p}'),
    ('layers.{i}.ffn.layers.0.0.{p}', 'blocks.{i}.mlp.fc1.{p}'),
    ('layers.{i}.ffn.layers.1.{p}', 'blocks.{i}.mlp.fc2.{p}'),
    ('layers.{i}.ffn.gamma2.weight', 'blocks.{i}.ls2.gamma'),
    ('ln1.{p}', 'norm.{p}'),
]
#: Official-only spellings: iBOT's layer scale (``init_values > 0``).
OFFICIAL_ALIASES: List[Tuple[str, str]] = [
    ('layers.{i}.attn.gamma1.weight', 'blocks.{i}.gamma_1'),
    ('layers.{i}.ffn.gamma2.weight', 'blocks.{i}.gamma_2'),
]
#: Pre-training-only tensors: iBOT ``masked_embed``, DINOv2 / ours ``mask_token``;
#: ``head.*`` of the official ViTs is the (usually empty) classifier.
PRETRAIN_ONLY_KEYS = ('mask_token', 'masked_embed')
REGISTER_KEY = 'register_tokens'

#: Where the backbone sits in this project's checkpoints, per ``--key``.
OUR_PREFIXES = {
    'teacher': ('teacher.module.backbone.',
                'teacher.module.0.'),  # an EMA of nn.Sequential(backbone, ...) (projects/dino)
    'student': ('backbone.',),
}
WRAPPER_PREFIXES = ('_orig_mod.', 'module.')  # torch.compile, DDP
SOURCES = ('dino', 'ibot', 'simdino')


def _template_regex(template: str) -> 're.Pattern':
    pattern = re.escape(template).replace(r'\{i\}', r'(?P<i>\d+)').replace(
        r'\{p\}', r'(?P<p>weight|bias)')
    return re.compile(pattern + r'\Z')


def _rename(key: str, table: List[Tuple[str, str]], reverse: bool = False) -> Optional[str]:
    """Map ``key`` with the first matching row of ``table`` (right->left when reverse)."""
    for left, right in table:
        src, dst = (right, left) if reverse else (left, right)
        match = _template_regex(src).match(key)
        if match:
            return dst.format(**match.groupdict())
    return None


# --------------------------------------------------------------------------- loading
def load_checkpoint_file(path: str, official: bool = False) -> dict:
    """Safe ``torch.load`` on CPU with a one-line error for a missing, unreadable or
    untrusted file; ``official`` also admits the ``argparse.Namespace`` of the official
    repositories' training checkpoints (attributes only, no code)."""
    if not osp.isfile(path):
        raise FileNotFoundError(f'checkpoint not found: {path}')
    ckpt = safe_load.load_checkpoint_file(path, map_location='cpu',
                                          extra_safe=[argparse.Namespace] if official else ())
    if not isinstance(ckpt, dict):
        raise ValueError(f'{path}: expected a dict checkpoint, got {type(ckpt).__name__}')
    return ckpt


def _tensor_dict(obj) -> bool:
    return isinstance(obj, dict) and len(obj) > 0 and all(
        isinstance(v, torch.Tensor) for v in obj.values())


def _strip_wrappers(key: str) -> str:
    changed = True
    while changed:
        changed = False
        for prefix in WRAPPER_PREFIXES:
            if key.startswith(prefix):
                key, changed = key[len(prefix):], True
    return key


def _mmengine_state_dict(ckpt: dict, path: str) -> dict:
    state = ckpt.get('state_dict', ckpt)
    if not _tensor_dict(state):
        raise ValueError(f'{path}: unknown layout: no state_dict of tensors '
                         f'(top-level keys: {sorted(ckpt)[:8]})')
    return state


def select_our_backbone(ckpt: dict, key: str = 'teacher', path: str = 'checkpoint') -> dict:
    """This project's checkpoint -> the backbone's state dict, keys without prefix."""
    if key not in OUR_PREFIXES:
        raise ValueError(f"--key must be 'teacher' or 'student', got {key!r}")
    state = _mmengine_state_dict(ckpt, path)
    for prefix in OUR_PREFIXES[key]:
        picked = OrderedDict((k[len(prefix):], v) for k, v in state.items()
                             if k.startswith(prefix))
        if picked:
            return picked
    if any(k.startswith('blocks.') or '.blocks.' in k for k in state):
        raise ValueError(f'{path}: looks like an official DINO/iBOT/SimDINO checkpoint '
                         '(blocks.* keys); pass --from dino|ibot|simdino')
    wanted = ' or '.join(p + '*' for p in OUR_PREFIXES[key])
    hint = ''
    if key == 'teacher' and any(k.startswith('backbone.') for k in state):
        hint = '; it has student keys (backbone.*): use --key student'
    raise ValueError(f'{path}: no {key} keys ({wanted}) in the checkpoint{hint}')


def _official_container(ckpt: dict, key: str, path: str) -> dict:
    """Pick the dict holding the weights in an official DINO/iBOT/SimDINO file."""
    if key in ckpt and isinstance(ckpt[key], dict):
        return ckpt[key]
    other = 'student' if key == 'teacher' else 'teacher'
    if other in ckpt and isinstance(ckpt[other], dict):
        raise ValueError(f'{path}: no {key!r} entry in the checkpoint (it has {other!r}); '
                         f'use --key {other}')
    if key == 'student':
        raise ValueError(f"{path}: no 'student' entry: a released backbone holds the teacher "
                         'only; use --key teacher')
    if isinstance(ckpt.get('state_dict'), dict):
        return ckpt['state_dict']  # iBOT's released checkpoint_teacher.pth
    if isinstance(ckpt.get('model'), dict):
        return ckpt['model']
    return ckpt  # a bare released backbone (dino_vitbase16_pretrain.pth ...)


def convert_official(ckpt: dict, key: str = 'teacher', path: str = 'checkpoint') -> dict:
    """Official DINO / iBOT / SimDINO(v2) ViT weights -> mmpretrain ``VisionTransformer`` keys.

    Wrapper prefixes (``_orig_mod.``, ``module.``) are stripped; when ``backbone.*`` keys
    exist only they are kept (the head of the multi-crop wrapper is dropped).
    """
    container = _official_container(ckpt, key, path)
    if not _tensor_dict(container):
        raise ValueError(f'{path}: unknown layout: no dict of tensors under '
                         f'{key!r}/state_dict (top-level keys: {sorted(ckpt)[:8]})')
    state = OrderedDict((_strip_wrappers(k), v) for k, v in container.items())
    if any(k.startswith('backbone.') for k in state):
        state = OrderedDict((k[len('backbone.'):], v) for k, v in state.items()
                            if k.startswith('backbone.'))
    if any(k.startswith('fc_norm.') for k in state):
        raise ValueError(f'{path}: mean-pooling ViT (fc_norm.*) is not supported: '
                         'mmpretrain has no equivalent of its pooled CLS')
    # DINOv2 "block chunks" (FSDP): blocks.<chunk>.<index>.* -> blocks.<index>.*
    state = OrderedDict((re.sub(r'^blocks\.\d+\.(\d+)\.', r'blocks.\1.', k), v)
                        for k, v in state.items())
    out = OrderedDict()
    for k, v in state.items():
        if k in PRETRAIN_ONLY_KEYS or k.startswith('head.'):
            continue
        if k == REGISTER_KEY:
            out[k] = v
            continue
        new = _rename(k, MMPRETRAIN_TO_TIMM, reverse=True) or _rename(
            k, OFFICIAL_ALIASES, reverse=True)
        if new is None:
            raise ValueError(f'{path}: unknown layout: key {k!r} is not a DINO/iBOT/SimDINO '
                             'ViT key (see MMPRETRAIN_TO_TIMM in this script)')
        out[new] = v
    if 'patch_embed.projection.weight' not in out:
        raise ValueError(f'{path}: unknown layout: no patch_embed.proj.weight among the '
                         f'backbone keys (first keys: {list(state)[:5]})')
    return out


# --------------------------------------------------------------------------- layouts
def backbone_kind(state: dict) -> str:
    """'VisionTransformer' or 'ResNet' from mmpretrain key names; ValueError otherwise."""
    vit_keys = [k for k in state if k not in PRETRAIN_ONLY_KEYS and k != REGISTER_KEY]
    if 'patch_embed.projection.weight' in state and all(
            _rename(k, MMPRETRAIN_TO_TIMM) is not None or k.startswith('ln2.')
            for k in vit_keys):
        return 'VisionTransformer'
    if any(k.startswith('layer1.') for k in state) and (
            'conv1.weight' in state or any(k.startswith('stem.') for k in state)):
        return 'ResNet'
    unknown = [k for k in state if _rename(k, MMPRETRAIN_TO_TIMM) is None][:5]
    raise ValueError('unknown backbone layout: expected mmpretrain VisionTransformer or '
                     f'ResNet keys, got e.g. {unknown or list(state)[:5]}')


def vit_info(state: dict) -> dict:
    """Architecture facts of an mmpretrain ViT state dict, for the export's meta."""
    proj = state['patch_embed.projection.weight']
    layers = {int(m.group(1)) for m in (re.match(r'layers\.(\d+)\.', k) for k in state) if m}
    regs = state.get(REGISTER_KEY)
    return dict(embed_dims=int(proj.shape[0]), patch_size=int(proj.shape[-1]),
                in_channels=int(proj.shape[1]), num_layers=len(layers),
                num_pos_embed=int(state['pos_embed'].shape[1]) if 'pos_embed' in state else 0,
                num_register_tokens=int(regs.shape[1]) if regs is not None else 0,
                layer_scale='layers.0.attn.gamma1.weight' in state)


def to_timm(state: dict) -> dict:
    """mmpretrain ViT keys -> timm ViT keys (table ``MMPRETRAIN_TO_TIMM``)."""
    if REGISTER_KEY in state:
        raise ValueError('--to timm does not support register tokens: timm adds the position '
                         'embedding to its reg_token differently; export --to mmpretrain')
    out = OrderedDict()
    for k, v in state.items():
        new = _rename(k, MMPRETRAIN_TO_TIMM)
        if new is None:
            raise ValueError(f'--to timm: no timm name for {k!r} (see MMPRETRAIN_TO_TIMM)')
        out[new] = v
    return out


# --------------------------------------------------------------------------- main entry
def extract_backbone(src: str, dst: str, key: str = 'teacher', to: str = 'mmpretrain',
                     source: Optional[str] = None, prefix: str = '') -> dict:
    """Read ``src``, write ``{'state_dict', 'meta'}`` to ``dst`` and return it."""
    if to not in ('mmpretrain', 'timm'):
        raise ValueError(f"--to must be 'mmpretrain' or 'timm', got {to!r}")
    if source is not None and source not in SOURCES:
        raise ValueError(f'--from must be one of {SOURCES}, got {source!r}')
    if key not in OUR_PREFIXES:
        raise ValueError(f"--key must be 'teacher' or 'student', got {key!r}")
    ckpt = load_checkpoint_file(src, official=source is not None)
    if source is None:
        state = select_our_backbone(ckpt, key, src)
    else:
        state = convert_official(ckpt, key, src)
    dropped = sorted(k for k in state if k in PRETRAIN_ONLY_KEYS)
    state = OrderedDict((k, v.detach().clone()) for k, v in state.items()
                        if k not in PRETRAIN_ONLY_KEYS)
    kind = backbone_kind(state)
    meta = dict(source=osp.abspath(src), key=key, source_format=source or 'mmselfsup_vmf',
                to=to, backbone=kind, dropped_keys=dropped, prefix=prefix)
    src_meta = ckpt.get('meta') if isinstance(ckpt.get('meta'), dict) else {}
    meta.update({k: src_meta[k] for k in ('epoch', 'iter') if isinstance(src_meta.get(k), int)})
    if kind == 'VisionTransformer':
        meta.update(vit_info(state))
    if to == 'timm':
        if kind != 'VisionTransformer':
            raise ValueError(f'--to timm supports ViT backbones only, this one is a {kind}')
        state = to_timm(state)
    if prefix:
        state = OrderedDict((prefix + k, v) for k, v in state.items())
    out = {'state_dict': state, 'meta': meta}
    os.makedirs(osp.dirname(osp.abspath(dst)), exist_ok=True)
    torch.save(out, dst)
    return out


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description='Extract backbone-only weights (teacher by default) from a pre-training '
        'checkpoint, for mmpretrain/mmseg (init_cfg=Pretrained) or timm.')
    parser.add_argument('checkpoint', help='pre-training checkpoint (.pth)')
    parser.add_argument('out', help='output file (.pth)')
    parser.add_argument('--key', choices=('teacher', 'student'), default='teacher',
                        help='which network to export (default: teacher, as DINO/iBOT do)')
    parser.add_argument('--to', choices=('mmpretrain', 'timm'), default='mmpretrain',
                        help='key layout of the output (default: mmpretrain)')
    parser.add_argument('--from', dest='source', choices=SOURCES, default=None,
                        help="read an official DINO / iBOT / SimDINO checkpoint instead of "
                        "this project's")
    parser.add_argument('--prefix', default='',
                        help="prepend this to every key, e.g. 'backbone.' for configs that "
                        "load with init_cfg prefix='backbone.'")
    parser.add_argument('--trust-checkpoint', action='store_true',
                        help='unpickle any type in CHECKPOINT (can run code: only for files '
                        'you trust); default: tensors and the types mmengine writes')
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.trust_checkpoint:
        safe_load.set_trust(True)
    try:
        out = extract_backbone(args.checkpoint, args.out, key=args.key, to=args.to,
                               source=args.source, prefix=args.prefix)
    except (FileNotFoundError, ValueError, TypeError) as e:
        print(f'error: {e}', file=sys.stderr)
        return 1
    meta = out['meta']
    print(f"saved {len(out['state_dict'])} tensors of the {meta['key']} {meta['backbone']} "
          f"({meta['to']} keys) to {args.out}; dropped: {meta['dropped_keys'] or 'nothing'}")
    if meta.get('num_register_tokens'):
        print(f"note: kept {meta['num_register_tokens']} register tokens; only "
              'MaskedViT(num_register_tokens=...) loads them')
    return 0


if __name__ == '__main__':
    sys.exit(main())
