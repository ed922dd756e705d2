"""The official ViT initialisations, applied to mmpretrain's ``VisionTransformer``.

mmpretrain initialises its ViT differently from the official self-distillation code: PyTorch's
default for the attention linears, Xavier for the MLP, Kaiming for the patch embedding and a
zero CLS token. The published recipes of this project use the official scheme instead
(``SelfDistillation(backbone_init=...)``); the parameters keep mmpretrain's names, so exported
backbones stay plain mmpretrain ViTs. Details: ``docs/methods.md#official-initialisation``.
"""
import torch
from mmengine.model.weight_init import trunc_normal_
from torch import nn

#: 'dino': DINO, iBOT, SimDINO (``VisionTransformer._init_weights`` of facebookresearch/dino);
#: 'dinov2': DINOv2, SimDINOv2 (``init_weights_vit_timm`` of facebookresearch/dinov2).
OFFICIAL_INITS = ('dino', 'dinov2')
#: the std of the CLS-token init of each scheme (trunc-normal for 'dino', normal for 'dinov2')
CLS_TOKEN_STD = dict(dino=0.02, dinov2=1e-6)


@torch.no_grad()
def official_vit_init(vit: nn.Module, style: str) -> None:
    """Re-initialise ``vit`` in place as the official code does.

    * every ``nn.Linear``: truncated normal (std 0.02, cut at ±2) weights, zero biases;
    * every ``nn.LayerNorm``: weight 1, bias 0;
    * the patch-embedding ``nn.Conv2d``: PyTorch's default (neither official code changes it);
    * ``pos_embed``: truncated normal, std 0.02 (mmpretrain does the same);
    * ``cls_token``: truncated normal std 0.02 ('dino') or normal std 1e-6 ('dinov2').

    Mask and register tokens keep their initialisation (``MaskedViT``'s switches).
    """
    if style not in OFFICIAL_INITS:
        raise ValueError(f'backbone_init must be one of {OFFICIAL_INITS} or None, got {style!r}')
    for module in vit.modules():
        if isinstance(module, nn.Linear):
            trunc_normal_(module.weight, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.LayerNorm):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Conv2d):
            module.reset_parameters()
    if getattr(vit, 'pos_embed', None) is not None:
        trunc_normal_(vit.pos_embed, std=0.02)
    if getattr(vit, 'cls_token', None) is not None:
        if style == 'dino':
            trunc_normal_(vit.cls_token, std=CLS_TOKEN_STD['dino'])
        else:
            nn.init.normal_(vit.cls_token, std=CLS_TOKEN_STD['dinov2'])
