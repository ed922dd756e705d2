# ADE20K semantic segmentation, UperNet on a pre-trained ViT-B/16, 512x512 crops, 160k iters.
# Recipe of iBOT (evaluation/semantic_segmentation/configs/upernet/vit_base_512_ade20k_160k.py
# and its README command for ViT-B/16): BEiT-style deconvolution pyramid on blocks 3/5/7/11,
# UperNet with 768 channels + FCN auxiliary head, AdamW lr 8e-5, weight decay 0.05,
# layer-wise LR decay 0.65, 1500 linear warm-up iterations then poly (power 1), batch 8x2,
# drop-path 0.1, sliding-window test (stride 341).
# Deviation (documented in docs/downstream.md): mmpretrain's ViT applies its final LayerNorm
# to the last block only (iBOT's `out_with_norm=true` normalises blocks 3/5/7 too).
#
# The backbone is the file written by tools/model_converters/extract_backbone.py (teacher by
# default), loaded by mmpretrain's VisionTransformer; its 14x14 position embedding is
# resized (bicubic) to the 32x32 grid of 512x512 inputs when the weights are loaded.
# Set the path with:
#   --cfg-options model.backbone.init_cfg.checkpoint=work_dirs/<run>/backbone.pth
_base_ = [
    'mmseg::_base_/models/upernet_mae.py',
    'mmseg::_base_/datasets/ade20k.py',
    'mmseg::_base_/default_runtime.py',
    'mmseg::_base_/schedules/schedule_160k.py',
]
custom_imports = dict(imports=['mmpretrain.models', 'mmselfsup_vmf'],
                      allow_failed_imports=False)

pretrained = 'work_dirs/backbone.pth'  # output of extract_backbone.py
crop_size = (512, 512)
num_layers = 12
embed_dims = 768
layer_decay_rate = 0.65

data_preprocessor = dict(size=crop_size)
model = dict(
    data_preprocessor=data_preprocessor,
    pretrained=None,
    backbone=dict(
        _delete_=True,
        type='mmpretrain.VisionTransformer',
        arch='base',
        img_size=512,
        patch_size=16,
        out_indices=(3, 5, 7, 11),
        out_type='featmap',
        final_norm=True,
        drop_path_rate=0.1,
        interpolate_mode='bicubic',
        init_cfg=dict(type='Pretrained', checkpoint=pretrained)),
    neck=dict(type='Feature2Pyramid', embed_dim=embed_dims, rescales=[4, 2, 1, 0.5]),
    decode_head=dict(in_channels=[embed_dims] * 4, channels=embed_dims, num_classes=150),
    auxiliary_head=dict(in_channels=embed_dims, num_classes=150),
    test_cfg=dict(mode='slide', crop_size=crop_size, stride=(341, 341)))


def _layer_decay_keys(prefix, num_layers, rate):
    """``custom_keys`` for mmengine's DefaultOptimWrapperConstructor: BEiT/iBOT layer decay.

    depth(cls_token, pos_embed, patch_embed) = 0, depth(layers.i) = i + 1, and everything
    else (final norm, neck, heads) = num_layers + 1; lr_mult = rate ** (num_layers + 1 - depth).
    Norms, biases, cls_token and pos_embed get no weight decay. (mmseg's own
    LayerDecayOptimizerConstructor only accepts BEiT/MAE/ConvNeXt backbone classes.)
    """
    def mult(depth):
        return rate**(num_layers + 1 - depth)

    keys = {
        prefix + 'cls_token': dict(lr_mult=mult(0), decay_mult=0.),
        prefix + 'pos_embed': dict(lr_mult=mult(0), decay_mult=0.),
        prefix + 'patch_embed.projection.weight': dict(lr_mult=mult(0)),
        prefix + 'patch_embed.projection.bias': dict(lr_mult=mult(0), decay_mult=0.),
    }
    no_decay = ('ln1.', 'ln2.', 'attn.qkv.bias', 'attn.proj.bias', 'ffn.layers.0.0.bias',
                'ffn.layers.1.bias')
    for i in range(num_layers):
        layer = f'{prefix}layers.{i}.'
        keys[layer] = dict(lr_mult=mult(i + 1))
        for name in no_decay:
            keys[layer + name] = dict(lr_mult=mult(i + 1), decay_mult=0.)
    return keys


optim_wrapper = dict(
    _delete_=True,
    type='OptimWrapper',  # use --amp (mmseg's or our tools/train.py) for fp16 as iBOT
    optimizer=dict(type='AdamW', lr=8e-5, betas=(0.9, 0.999), weight_decay=0.05),
    paramwise_cfg=dict(
        norm_decay_mult=0.,
        bias_decay_mult=0.,
        custom_keys=_layer_decay_keys('backbone.', num_layers, layer_decay_rate)))

param_scheduler = [
    dict(type='LinearLR', start_factor=1e-6, by_epoch=False, begin=0, end=1500),
    dict(type='PolyLR', eta_min=0.0, power=1.0, begin=1500, end=160000, by_epoch=False),
]

# 8 GPUs x 2 images (iBOT); scale the lr linearly if you change the total batch of 16.
train_dataloader = dict(batch_size=2)
val_dataloader = dict(batch_size=1)
test_dataloader = val_dataloader
auto_scale_lr = dict(enable=False, base_batch_size=16)
# a backbone checkpoint that does not fit model.backbone is an error (mmengine only warns)
custom_hooks = [dict(type='PretrainedMatchHook')]
