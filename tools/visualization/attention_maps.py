"""Last-layer CLS self-attention of a ViT, per head and averaged, overlaid on an image.

The attention is computed explicitly, ``A = softmax(q k^T / sqrt(d_head))`` with ``q, k``
from the last block's ``qkv`` applied to its ``ln1`` input (DINO's
``get_last_selfattention``): never through a fused kernel, which does not expose ``A``.
Backbones that have ``get_last_selfattention`` (this project's ``MaskedViT``, which also
handles registers) are asked for it; a plain mmpretrain ``VisionTransformer`` is walked
layer by layer here.

Usage: python tools/visualization/attention_maps.py CONFIG CHECKPOINT [IMAGE] [--out DIR]
           [--key teacher|student] [--image-size 480] [--patch-size 16]

IMAGE is a file or ``skimage:<name>``, one of scikit-image's bundled photographs (loaded at
run time, e.g. ``skimage:astronaut``, the default, or ``skimage:coffee``).

CONFIG is the pre-training config (its ``model.backbone`` is built); CHECKPOINT is a
pre-training checkpoint (``--key`` picks teacher/student) or a file written by
``tools/model_converters/extract_backbone.py``. Writes ``<stem>_head<i>.png``,
``<stem>_mean.png`` (both at the resized image's size) and ``<stem>_grid.png``: the image, the
mean over heads and every head, each panel labelled, in a grid without empty cells.
"""
import argparse
import importlib.util
import math
import os
import os.path as osp
import sys
from typing import List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__)))))  # checkout

IMAGENET_MEAN = (123.675, 116.28, 103.53)
IMAGENET_STD = (58.395, 57.12, 57.375)


def _load_extractor():
    """``tools/model_converters/extract_backbone.py`` (tools/ is not a package)."""
    path = osp.join(osp.dirname(osp.dirname(osp.abspath(__file__))), 'model_converters',
                    'extract_backbone.py')
    spec = importlib.util.spec_from_file_location('extract_backbone', path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# --------------------------------------------------------------------------- model
def build_backbone(config: str, cfg_options: Optional[dict] = None):
    """Build ``model.backbone`` of an mmengine config in mmpretrain's registry (eval mode)."""
    from mmengine.config import Config
    from mmpretrain.registry import MODELS

    import mmselfsup_vmf  # noqa: F401  (shims + registration of MaskedViT etc.)
    if not osp.isfile(config):
        raise FileNotFoundError(f'config not found: {config}')
    cfg = Config.fromfile(config)
    if cfg_options:
        cfg.merge_from_dict(cfg_options)
    backbone_cfg = cfg.get('model', {}).get('backbone')
    if backbone_cfg is None:
        raise ValueError(f'{config}: no model.backbone in the config')
    backbone_cfg = backbone_cfg.copy()
    backbone_cfg.pop('init_cfg', None)  # weights come from CHECKPOINT
    backbone = MODELS.build(backbone_cfg)
    preprocessor = cfg.model.get('data_preprocessor') or {}
    mean = tuple(preprocessor.get('mean', IMAGENET_MEAN))
    std = tuple(preprocessor.get('std', IMAGENET_STD))
    backbone.eval()  # (mmpretrain backbones' train()/eval() return None)
    return backbone, mean, std


def load_backbone_weights(backbone: torch.nn.Module, checkpoint: str, key: str = 'teacher'):
    """Load a pre-training checkpoint's teacher/student backbone, or an exported backbone."""
    extractor = _load_extractor()
    ckpt = extractor.load_checkpoint_file(checkpoint)
    state = extractor._mmengine_state_dict(ckpt, checkpoint)
    if any(k.startswith(('teacher.', 'backbone.')) for k in state):  # pre-training layout
        state = extractor.select_our_backbone(ckpt, key, checkpoint)
    result = backbone.load_state_dict(state, strict=False)
    missing = [k for k in result.missing_keys if k not in extractor.PRETRAIN_ONLY_KEYS]
    if missing or result.unexpected_keys:
        raise ValueError(f'{checkpoint}: weights do not fit the config backbone: missing '
                         f'{missing[:5]}, unexpected {result.unexpected_keys[:5]}')


def _patch_size(backbone, override: Optional[int]) -> int:
    proj = getattr(getattr(backbone, 'patch_embed', None), 'projection', None)
    inferred = int(proj.stride[0]) if proj is not None else None
    if override is not None and inferred is not None and override != inferred:
        raise ValueError(f'--patch-size {override} does not match the backbone\'s patch '
                         f'size {inferred}')
    if override is None and inferred is None:
        raise ValueError('cannot infer the patch size of this backbone; pass --patch-size')
    return int(override or inferred)


@torch.no_grad()
def explicit_last_selfattention(backbone, x: torch.Tensor) -> torch.Tensor:
    """(B, heads, L, L) attention of the last block of an mmpretrain ``VisionTransformer``."""
    from mmpretrain.models.utils import resize_pos_embed
    if getattr(backbone, 'cls_token', None) is None:
        raise ValueError('attention maps need a ViT with a CLS token')
    batch = x.shape[0]
    x, hw = backbone.patch_embed(x)
    x = torch.cat((backbone.cls_token.expand(batch, -1, -1), x), dim=1)
    x = x + resize_pos_embed(backbone.pos_embed, backbone.patch_resolution, hw,
                             mode=backbone.interpolate_mode,
                             num_extra_tokens=backbone.num_extra_tokens)
    x = backbone.pre_norm(backbone.drop_after_pos(x))
    for layer in backbone.layers[:-1]:
        x = layer(x)
    last = backbone.layers[-1]
    attn = last.attn
    length = x.shape[1]
    qkv = attn.qkv(last.ln1(x)).reshape(batch, length, 3, attn.num_heads, attn.head_dims)
    q, k = qkv.permute(2, 0, 3, 1, 4)[:2]
    return ((q @ k.transpose(-2, -1)) / math.sqrt(attn.head_dims)).softmax(dim=-1)


@torch.no_grad()
def cls_attention_maps(backbone, x: torch.Tensor, patch_size: int) -> torch.Tensor:
    """CLS -> patch attention of the last block, (heads, h, w), for one image (1, 3, H, W)."""
    if not hasattr(backbone, 'layers') or not hasattr(backbone, 'patch_embed'):
        raise ValueError(f'attention maps need a ViT backbone, got {type(backbone).__name__}')
    h, w = x.shape[-2] // patch_size, x.shape[-1] // patch_size
    if hasattr(backbone, 'get_last_selfattention'):
        attn = backbone.get_last_selfattention(x)
    else:
        if getattr(backbone, 'register_tokens', None) is not None:
            raise ValueError('a backbone with register tokens needs get_last_selfattention')
        attn = explicit_last_selfattention(backbone, x)
    # Patches are the last h*w tokens, whatever CLS/register tokens precede them.
    return attn[0, :, 0, -h * w:].reshape(-1, h, w).float()


# --------------------------------------------------------------------------- image
SAMPLE_PREFIX = 'skimage:'
SAMPLES = ('astronaut', 'coffee', 'chelsea', 'rocket', 'cat')  # RGB photos of skimage.data


def sample_image(name: str) -> np.ndarray:
    """One of scikit-image's bundled RGB photographs, (H, W, 3) uint8."""
    if name not in SAMPLES:
        raise ValueError(f'unknown sample image {SAMPLE_PREFIX}{name}; choose from '
                         + ', '.join(SAMPLE_PREFIX + s for s in SAMPLES))
    try:
        import skimage.data
    except ImportError as e:
        raise ValueError(f'{SAMPLE_PREFIX}{name} needs scikit-image (pip install '
                         'scikit-image)') from e
    return getattr(skimage.data, name)()


def read_rgb(image) -> np.ndarray:
    """Path, ``skimage:<name>`` or (H, W[, 3]) array -> (H, W, 3) uint8 RGB."""
    import cv2
    if isinstance(image, str) and image.startswith(SAMPLE_PREFIX):
        return sample_image(image[len(SAMPLE_PREFIX):])
    if isinstance(image, str):
        if not osp.isfile(image):
            raise FileNotFoundError(f'image not found: {image}')
        bgr = cv2.imread(image, cv2.IMREAD_COLOR)
        if bgr is None:
            raise ValueError(f'{image}: not an image cv2 can read')
        return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
    img = np.asarray(image)
    if img.ndim == 2:
        img = np.repeat(img[..., None], 3, axis=-1)
    if img.ndim != 3 or img.shape[-1] != 3:
        raise ValueError(f'image array must be (H, W) or (H, W, 3), got {img.shape}')
    return img.astype(np.uint8)


def prepare_image(rgb: np.ndarray, image_size: Optional[int], patch_size: int, mean, std):
    """Resize (square ``image_size``, or keep) and crop to a multiple of the patch size."""
    import cv2
    if image_size:
        rgb = cv2.resize(rgb, (image_size, image_size), interpolation=cv2.INTER_CUBIC)
    h = rgb.shape[0] - rgb.shape[0] % patch_size
    w = rgb.shape[1] - rgb.shape[1] % patch_size
    if h == 0 or w == 0:
        raise ValueError(f'image {rgb.shape[:2]} is smaller than one patch ({patch_size})')
    rgb = np.ascontiguousarray(rgb[:h, :w])
    x = torch.from_numpy(rgb).float().permute(2, 0, 1)
    x = (x - torch.tensor(mean).view(3, 1, 1)) / torch.tensor(std).view(3, 1, 1)
    return x.unsqueeze(0), rgb


def overlay(rgb: np.ndarray, attention: torch.Tensor, alpha: float = 0.5) -> np.ndarray:
    """Min-max normalised (h, w) map, upsampled (nearest) and blended as a heat map (RGB)."""
    import cv2
    a = attention - attention.min()
    a = a / a.max().clamp_min(1e-12)
    a = F.interpolate(a[None, None], size=rgb.shape[:2], mode='nearest')[0, 0]
    heat = cv2.applyColorMap((a.numpy() * 255).astype(np.uint8), cv2.COLORMAP_INFERNO)
    heat = cv2.cvtColor(heat, cv2.COLOR_BGR2RGB)
    return cv2.addWeighted(rgb, 1 - alpha, heat, alpha, 0)


def grid_columns(n: int) -> int:
    """The smallest divisor of n that is >= sqrt(n): a grid no taller than wide, no empty cell."""
    return min(c for c in range(1, n + 1) if n % c == 0 and c * c >= n)


def label(img: np.ndarray, text: str) -> np.ndarray:
    """``img`` under a white band with ``text`` in black, scaled to the panel width."""
    import cv2
    scale = max(0.3, img.shape[1] / 320)
    (tw, th), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)
    band = np.full((th + base + 6, img.shape[1], 3), 255, np.uint8)
    cv2.putText(band, text, (max(0, (img.shape[1] - tw) // 2), th + 3),
                cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), 1, cv2.LINE_AA)
    return np.concatenate([band, img])


def grid(images: Sequence[np.ndarray], titles: Sequence[str]) -> np.ndarray:
    """Labelled panels of equal size in ``grid_columns(len(images))`` columns."""
    panels = [label(img, title) for img, title in zip(images, titles)]
    cols = grid_columns(len(panels))
    rows = [np.concatenate(panels[r:r + cols], axis=1) for r in range(0, len(panels), cols)]
    return np.concatenate(rows, axis=0)


def save_attention_maps(rgb: np.ndarray, maps: torch.Tensor, out_dir: str,
                        stem: str) -> List[str]:
    """Write per-head and mean overlays (image size) plus a labelled grid; returns paths."""
    import cv2
    os.makedirs(out_dir, exist_ok=True)
    overlays = [overlay(rgb, m) for m in maps] + [overlay(rgb, maps.mean(0))]
    names = [f'{stem}_head{i}.png' for i in range(len(maps))] + [f'{stem}_mean.png']
    paths = []
    for name, img in zip(names, overlays):
        paths.append(osp.join(out_dir, name))
        cv2.imwrite(paths[-1], cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
    paths.append(osp.join(out_dir, f'{stem}_grid.png'))
    tiles = [rgb, overlays[-1]] + overlays[:-1]
    titles = ['input', f'mean of {len(maps)} heads'] + [f'head {i}' for i in range(len(maps))]
    cv2.imwrite(paths[-1], cv2.cvtColor(grid(tiles, titles), cv2.COLOR_RGB2BGR))
    return paths


def attention_maps(config: str, checkpoint: str, image='skimage:astronaut',
                   out_dir: str = 'attention_maps',
                   key: str = 'teacher', image_size: Optional[int] = 480,
                   patch_size: Optional[int] = None) -> Tuple[torch.Tensor, List[str]]:
    """Full pipeline; returns the (heads, h, w) maps and the written PNG paths."""
    backbone, mean, std = build_backbone(config)
    load_backbone_weights(backbone, checkpoint, key)
    patch = _patch_size(backbone, patch_size)
    x, rgb = prepare_image(read_rgb(image), image_size, patch, mean, std)
    maps = cls_attention_maps(backbone, x, patch)
    if isinstance(image, str) and image.startswith(SAMPLE_PREFIX):
        stem = image[len(SAMPLE_PREFIX):]
    else:
        stem = osp.splitext(osp.basename(image))[0] if isinstance(image, str) else 'image'
    return maps, save_attention_maps(rgb, maps, out_dir, stem)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description='Last-layer CLS self-attention of a ViT (per head and mean) as PNG '
        'overlays, computed explicitly (no fused attention kernel).')
    parser.add_argument('config', help='pre-training config (its model.backbone is built)')
    parser.add_argument('checkpoint', help='pre-training checkpoint or exported backbone')
    parser.add_argument('image', nargs='?', default=SAMPLE_PREFIX + 'astronaut',
                        help='image file, or skimage:NAME for a photo bundled with '
                        f"scikit-image ({', '.join(SAMPLES)}); default skimage:astronaut")
    parser.add_argument('--out', default='attention_maps', help='output folder')
    parser.add_argument('--key', choices=('teacher', 'student'), default='teacher',
                        help='network of a pre-training checkpoint (default: teacher)')
    parser.add_argument('--image-size', type=int, default=480,
                        help='resize to this square size first (DINO: 480); 0 keeps the size')
    parser.add_argument('--patch-size', type=int, default=None,
                        help='patch size (default: read from the backbone)')
    parser.add_argument('--trust-checkpoint', action='store_true',
                        help='unpickle any type in CHECKPOINT (can run code: only for files '
                        'you trust)')
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.trust_checkpoint:
        _load_extractor().safe_load.set_trust(True)
    try:
        maps, paths = attention_maps(args.config, args.checkpoint, args.image, args.out,
                                     args.key, args.image_size or None, args.patch_size)
    except (FileNotFoundError, ValueError, TypeError) as e:
        print(f'error: {e}', file=sys.stderr)
        return 1
    print(f'{maps.shape[0]} heads, {maps.shape[1]}x{maps.shape[2]} patches; wrote '
          f'{len(paths)} PNGs to {args.out}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
