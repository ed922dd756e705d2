"""DINO's linear-probe features from an mmpretrain ViT (``eval_linear.py`` protocol).

DINO feeds its linear classifier ``get_intermediate_layers(x, n)``: the tokens of the last
``n`` blocks, *each* through the backbone's final LayerNorm, then

    f(x) = [LN(z_{L-n+1})_cls, ..., LN(z_L)_cls]  (+ mean_p LN(z_L)_p if avgpool)

with n = 4, no avgpool for ViT-S/16 (dim 4C) and n = 1 with avgpool for ViT-B/16 (dim 2C).
mmpretrain's ``VisionTransformer`` applies its final norm ``ln1`` to the last block only and
no mmpretrain neck concatenates stages, so this subclass computes ``f`` itself. It has
exactly the parameters of ``VisionTransformer``, so an exported backbone loads with no
missing or unexpected keys.
"""
import torch
from mmpretrain.models.backbones import VisionTransformer
from mmpretrain.models.utils import resize_pos_embed
from mmpretrain.registry import MODELS


@MODELS.register_module()
class LinearProbeViT(VisionTransformer):
    """``VisionTransformer`` whose output is DINO's linear-probe feature, a 1-tuple (B, D).

    Args:
        n_last_blocks (int): concatenate the normalised CLS token of this many last blocks.
        avgpool_patch_tokens (bool): also concatenate the mean normalised patch token of the
            last block. D = C * (n_last_blocks + avgpool_patch_tokens).
        **kwargs: ``VisionTransformer`` arguments (``arch``, ``img_size``, ``patch_size``,
            ``frozen_stages`` ...); ``out_indices``/``out_type`` are set from the above.
    """

    def __init__(self, n_last_blocks: int = 1, avgpool_patch_tokens: bool = False, **kwargs):
        for name in ('out_indices', 'out_type'):
            if name in kwargs:
                raise ValueError(f'LinearProbeViT sets {name} itself; use n_last_blocks')
        if not kwargs.get('final_norm', True):
            raise ValueError('LinearProbeViT needs final_norm=True (DINO normalises each block)')
        super().__init__(out_type='raw', **kwargs)
        if not 1 <= int(n_last_blocks) <= self.num_layers:
            raise ValueError(f'n_last_blocks must be in [1, {self.num_layers}], '
                             f'got {n_last_blocks}')
        if self.cls_token is None:
            raise ValueError('LinearProbeViT needs with_cls_token=True')
        self.n_last_blocks = int(n_last_blocks)
        self.avgpool_patch_tokens = bool(avgpool_patch_tokens)
        self.out_indices = list(range(self.num_layers - self.n_last_blocks, self.num_layers))
        self.feat_dim = self.embed_dims * (self.n_last_blocks + int(avgpool_patch_tokens))

    def forward(self, x: torch.Tensor):
        batch = x.shape[0]
        x, patch_resolution = self.patch_embed(x)
        x = torch.cat((self.cls_token.expand(batch, -1, -1), x), dim=1)
        x = x + resize_pos_embed(self.pos_embed, self.patch_resolution, patch_resolution,
                                 mode=self.interpolate_mode,
                                 num_extra_tokens=self.num_extra_tokens)
        x = self.pre_norm(self.drop_after_pos(x))
        normed = []
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i in self.out_indices:
                normed.append(self.ln1(x))
        feats = [tokens[:, 0] for tokens in normed]
        if self.avgpool_patch_tokens:
            feats.append(normed[-1][:, self.num_extra_tokens:].mean(dim=1))
        return (torch.cat(feats, dim=-1), )
