"""A maskable ViT for iBOT / iBOT-vMF / SimDINOv2, built on mmpretrain's VisionTransformer.

Token layout (L = 1 + R + N): ``[CLS, reg_1..reg_R, patch_1..patch_N]``.

* Masking (iBOT ``mask_model``, BEiT, DINOv2 ``prepare_tokens_with_masks``): a masked
  patch's embedding is *replaced* by the learnable ``mask_token`` before the position
  embedding is added, so a masked token enters the encoder as ``mask_token + pos_p``.
* Registers (DINOv2 / SimDINOv2, "Vision Transformers Need Registers"): R learnable
  tokens inserted right after CLS, *after* the position embedding (they have none). The
  position embedding keeps ``1 + N`` rows, so with ``R = 0`` and no mask this module is
  exactly mmpretrain's ``VisionTransformer`` plus one unused parameter.
* ``num_extra_tokens = 1 + R`` (CLS + registers), so ``out_type`` 'featmap' /
  'avg_featmap' and ``x[:, num_extra_tokens:]`` select the patch tokens.
* Crops of several sizes in one call (DINOv2's ``forward_features_list``): given a list of
  batches, each block runs on every batch before the next block. Every block is then called
  once per step, so FSDP2 gathers its shards once (per-size calls gather them again for the
  backward of each further size). The arithmetic per batch is the per-size call's; only
  drop-path draws its random masks in another order (block-major), with the same law.
"""
import math
from contextlib import contextmanager
from typing import List, Optional, Sequence, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from mmengine.model.weight_init import trunc_normal_
from mmpretrain.models.backbones import VisionTransformer
from mmpretrain.models.backbones.vision_transformer import TransformerEncoderLayer
from mmpretrain.models.utils import resize_pos_embed
from mmpretrain.registry import MODELS


def interpolate_pos_embed(pos_embed: torch.Tensor, src_shape, dst_shape, mode: str = 'bicubic',
                          num_extra_tokens: int = 1, offset: float = 0.0,
                          antialias: bool = False) -> torch.Tensor:
    """Resize the grid part ``(1, h0*w0, C)`` of a position embedding to ``dst_shape``.

    * ``offset > 0``: DINO's / DINOv2's ``interpolate_pos_encoding`` (``interpolate_offset``
      0.1): ``F.interpolate(scale_factor=((h + offset)/h0, (w + offset)/w0))``, which gives
      h x w rows but samples the source grid at ``(i + 0.5)·h0/(h + offset) − 0.5``
      (facebookresearch/dino ``vision_transformer.py``; DINO v1 applies the width factor to
      the first axis, which is the same for the square crops used here).
    * ``offset == 0``: an explicit output size, i.e. mmpretrain's ``resize_pos_embed``; with
      ``antialias`` as DINOv2 with ``interpolate_antialias=True`` (SimDINOv2).

    The first ``num_extra_tokens`` rows are kept.
    """
    if tuple(src_shape) == tuple(dst_shape):
        return pos_embed
    if offset == 0 and not antialias:
        return resize_pos_embed(pos_embed, src_shape, dst_shape, mode=mode,
                                num_extra_tokens=num_extra_tokens)
    extra, grid = pos_embed[:, :num_extra_tokens], pos_embed[:, num_extra_tokens:]
    channels = grid.shape[-1]
    grid = grid.reshape(1, *src_shape, channels).permute(0, 3, 1, 2)
    if offset > 0:
        size = dict(scale_factor=tuple((d + offset) / s for d, s in zip(dst_shape, src_shape)))
    else:
        size = dict(size=tuple(dst_shape))
    # float32 for half-precision weights; float64 stays float64
    grid = grid.to(torch.promote_types(grid.dtype, torch.float32))
    grid = F.interpolate(grid, mode=mode, align_corners=False, antialias=antialias, **size)
    if tuple(grid.shape[-2:]) != tuple(dst_shape):
        raise ValueError(f'pos_embed_offset={offset} resizes a {tuple(src_shape)} grid to '
                         f'{tuple(grid.shape[-2:])}, not {tuple(dst_shape)}; use an offset < 1')
    grid = grid.flatten(2).transpose(1, 2).to(pos_embed.dtype)
    return torch.cat((extra, grid), dim=1)


class MultiSizeEncoderLayer(TransformerEncoderLayer):
    """mmpretrain's ViT block, which also takes a list of token batches (lengths may differ)
    and returns the list of its outputs; the parameters and their names are the block's."""

    def forward(self, x):
        if isinstance(x, (list, tuple)):
            return [super(MultiSizeEncoderLayer, self).forward(t) for t in x]
        return super().forward(x)


@MODELS.register_module()
class MaskedViT(VisionTransformer):
    """mmpretrain ``VisionTransformer`` with a mask token, registers and uniform drop-path.

    Args (in addition to ``VisionTransformer``'s, e.g. ``layer_scale_init_value``, which
    mmpretrain already implements as ``layers.i.attn.gamma1`` / ``layers.i.ffn.gamma2``;
    SimDINOv2 uses 0.1, DINOv2 1e-5, iBOT/DINO none):
        num_register_tokens (int): R, the number of register tokens (SimDINOv2: 4).
        drop_path_uniform (bool): True: every block gets ``drop_path_rate`` (SimDINOv2);
            False: mmpretrain's ``linspace(0, drop_path_rate, L)`` (DINO, iBOT).
        mask_token_std (float): std of the truncated-normal init of ``mask_token`` in
            ``init_weights`` (BEiT/mmpretrain: 0.02; iBOT and DINOv2 leave it at 0, which
            ``mask_token_std=0`` reproduces).
        pos_embed_antialias (bool): resize the position embedding for other crop sizes
            with ``antialias=True`` (SimDINOv2 does); False keeps mmpretrain's resize.
        pos_embed_offset (float): DINO's ``interpolate_offset`` (0.1 in DINO, iBOT and
            SimDINO); 0 resizes to an explicit size as mmpretrain. See
            :func:`interpolate_pos_embed`.
        with_mask_token (bool): False for methods that never mask (DINO, SimDINO), so that
            no parameter goes unused under DDP; exports drop ``mask_token`` either way.

    ``forward`` also takes a list of image batches (and a list of masks, None where a batch
    has none) and returns one output tuple per batch: all crop sizes in one call.
    """

    takes_crop_lists = True

    def __init__(self,
                 arch='base',
                 *,
                 num_register_tokens: int = 0,
                 drop_path_uniform: bool = False,
                 mask_token_std: float = 0.02,
                 pos_embed_antialias: bool = False,
                 pos_embed_offset: float = 0.0,
                 with_mask_token: bool = True,
                 drop_path_rate: float = 0.,
                 layer_cfgs=dict(),
                 **kwargs):
        if not isinstance(num_register_tokens, int) or num_register_tokens < 0:
            raise ValueError(
                f'num_register_tokens must be an int >= 0, got {num_register_tokens!r}')
        if drop_path_uniform:
            layer_cfgs = self._uniform_drop_path_cfgs(arch, layer_cfgs, drop_path_rate)
        super().__init__(arch, drop_path_rate=drop_path_rate, layer_cfgs=layer_cfgs,
                         **kwargs)
        # pos_embed rows before the patch grid (CLS, or none); registers have no pos-embed.
        self.num_pos_extra_tokens = self.num_extra_tokens
        self.num_register_tokens = num_register_tokens
        self.num_extra_tokens = self.num_pos_extra_tokens + num_register_tokens
        self.mask_token_std = mask_token_std
        self.pos_embed_antialias = pos_embed_antialias
        if not 0 <= pos_embed_offset < 1:
            raise ValueError(f'pos_embed_offset must be in [0, 1), got {pos_embed_offset!r}')
        self.pos_embed_offset = float(pos_embed_offset)

        self.mask_token = (nn.Parameter(torch.zeros(1, 1, self.embed_dims))
                           if with_mask_token else None)
        if num_register_tokens > 0:
            self.register_tokens = nn.Parameter(
                torch.zeros(1, num_register_tokens, self.embed_dims))
        else:
            self.register_tokens = None
        if self.frozen_stages > 0:
            self._freeze_stages()
        for layer in self.layers:
            if type(layer) is TransformerEncoderLayer:  # the same module, list-aware forward
                layer.__class__ = MultiSizeEncoderLayer

    def _uniform_drop_path_cfgs(self, arch, layer_cfgs, drop_path_rate):
        """Per-layer cfgs that override the linear drop-path rule with a constant rate."""
        if isinstance(arch, str):
            key = arch.lower()
            if key not in self.arch_zoo:
                raise ValueError(f'arch {arch!r} is not one of {sorted(self.arch_zoo)}')
            num_layers = self.arch_zoo[key]['num_layers']
        elif isinstance(arch, dict) and 'num_layers' in arch:
            num_layers = arch['num_layers']
        else:
            raise ValueError(f'arch must be a name or a dict with num_layers, got {arch!r}')
        if isinstance(layer_cfgs, dict):
            layer_cfgs = [layer_cfgs] * num_layers
        if len(layer_cfgs) != num_layers:
            raise ValueError(f'layer_cfgs has {len(layer_cfgs)} entries for {num_layers} layers')
        return [dict(cfg, drop_path_rate=drop_path_rate) for cfg in layer_cfgs]

    def init_weights(self):
        super().init_weights()
        if isinstance(self.init_cfg, dict) and self.init_cfg.get('type') == 'Pretrained':
            return
        if self.mask_token is not None and self.mask_token_std > 0:
            trunc_normal_(self.mask_token, std=self.mask_token_std)
        if self.register_tokens is not None:
            nn.init.normal_(self.register_tokens, std=1e-6)  # as DINOv2

    def _freeze_stages(self):
        super()._freeze_stages()
        # The parent calls this from its __init__, before the tokens below exist.
        for name in ('mask_token', 'register_tokens'):
            param = getattr(self, name, None)
            if param is not None:
                param.requires_grad = False

    @contextmanager
    def _pos_embed_token_count(self):
        """Let parent code that sizes ``pos_embed`` see only its own extra rows."""
        saved = self.num_extra_tokens
        self.num_extra_tokens = self.num_pos_extra_tokens
        try:
            yield
        finally:
            self.num_extra_tokens = saved

    def _prepare_pos_embed(self, state_dict, prefix, *args, **kwargs):
        with self._pos_embed_token_count():
            super()._prepare_pos_embed(state_dict, prefix, *args, **kwargs)

    def _check_mask(self, mask: torch.Tensor, batch: int, hw) -> torch.Tensor:
        """(B, h, w) or (B, N) -> (B, N) bool, with a clear error on a shape mismatch."""
        if not isinstance(mask, torch.Tensor):
            raise TypeError(f'mask must be a torch.Tensor, got {type(mask).__name__}')
        num_patches = hw[0] * hw[1]
        if tuple(mask.shape) not in ((batch, hw[0], hw[1]), (batch, num_patches)):
            raise ValueError(f'mask shape {tuple(mask.shape)} does not match the patch grid: '
                             f'expected ({batch}, {hw[0]}, {hw[1]}) or ({batch}, {num_patches})')
        mask = mask.reshape(batch, num_patches)
        return mask if mask.dtype == torch.bool else mask != 0

    def prepare_tokens(self, x: torch.Tensor, mask: Optional[torch.Tensor] = None):
        """Images (B, 3, H, W) -> encoder input (B, 1 + R + N, C) and the patch grid (h, w)."""
        batch = x.shape[0]
        x, patch_resolution = self.patch_embed(x)
        if mask is not None:
            if self.mask_token is None:
                raise ValueError('this MaskedViT was built with with_mask_token=False and '
                                 'cannot take a mask; build it with with_mask_token=True')
            mask = self._check_mask(mask, batch, patch_resolution)
            x = torch.where(mask.unsqueeze(-1), self.mask_token.to(x.dtype), x)
        if self.cls_token is not None:
            x = torch.cat((self.cls_token.expand(batch, -1, -1), x), dim=1)
        x = x + interpolate_pos_embed(
            self.pos_embed, self.patch_resolution, patch_resolution, mode=self.interpolate_mode,
            num_extra_tokens=self.num_pos_extra_tokens, offset=self.pos_embed_offset,
            antialias=self.pos_embed_antialias)
        if self.register_tokens is not None:
            n = self.num_pos_extra_tokens
            x = torch.cat((x[:, :n], self.register_tokens.expand(batch, -1, -1), x[:, n:]), dim=1)
        x = self.drop_after_pos(x)
        return self.pre_norm(x), patch_resolution

    def forward(self, x: Union[torch.Tensor, Sequence[torch.Tensor]],
                mask: Union[torch.Tensor, Sequence[Optional[torch.Tensor]], None] = None):
        """As ``VisionTransformer.forward``; where ``mask`` (B, h, w)/(B, N) is True the patch
        embedding is replaced by ``mask_token``. A list ``x`` (with a list ``mask`` or None)
        gives a list of output tuples, one per batch, each block running on every batch in
        turn."""
        if not isinstance(x, (list, tuple)):
            return self.forward_list([x], None if mask is None else [mask])[0]
        return self.forward_list(x, mask)

    def forward_list(self, xs: Sequence[torch.Tensor],
                     masks: Optional[Sequence[Optional[torch.Tensor]]] = None) -> List[tuple]:
        masks = [None] * len(xs) if masks is None else list(masks)
        if len(masks) != len(xs):
            raise ValueError(f'{len(masks)} masks for {len(xs)} image batches; give one per '
                             'batch (None for a batch without a mask)')
        prepared = [self.prepare_tokens(x, m) for x, m in zip(xs, masks)]
        tokens = [t for t, _ in prepared]
        outs = [[] for _ in xs]
        for i, layer in enumerate(self.layers):
            if len(tokens) > 1 and isinstance(layer, MultiSizeEncoderLayer):
                tokens = layer(tokens)  # one call of the block for all batches
            else:
                tokens = [layer(t) for t in tokens]
            if i == len(self.layers) - 1 and self.final_norm:
                tokens = [self.ln1(t) for t in tokens]
            if i in self.out_indices:
                for out, t, (_, grid) in zip(outs, tokens, prepared):
                    out.append(self._format_output(t, grid))
        return [tuple(out) for out in outs]

    @torch.no_grad()
    def get_last_selfattention(self, x: torch.Tensor,
                               mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Softmax attention of the last block, (B, heads, L, L), computed explicitly.

        ``A = softmax(q k^T / sqrt(d_head))`` with ``q, k`` from the last block's ``qkv``
        applied to its ``ln1`` input (no dropout), as DINO's attention-map visualisation.
        """
        x, _ = self.prepare_tokens(x, mask)
        for layer in self.layers[:-1]:
            x = layer(x)
        last = self.layers[-1]
        attn = last.attn
        batch, length, _ = x.shape
        qkv = attn.qkv(last.ln1(x)).reshape(batch, length, 3, attn.num_heads, attn.head_dims)
        q, k = qkv.permute(2, 0, 3, 1, 4)[:2]
        logits = (q @ k.transpose(-2, -1)) / math.sqrt(attn.head_dims)
        return logits.softmax(dim=-1)

    def get_layer_depth(self, param_name: str, prefix: str = ''):
        """As the parent, with ``mask_token`` / ``register_tokens`` at depth 0 (embeddings)."""
        if param_name.startswith(prefix) and param_name[len(prefix):] in (
                'mask_token', 'register_tokens'):
            return 0, self.num_layers + 2
        return super().get_layer_depth(param_name, prefix)
