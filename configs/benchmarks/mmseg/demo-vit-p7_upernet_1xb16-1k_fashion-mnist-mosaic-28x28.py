# UperNet fine-tuning of the demo ViT (28 px, patch 7, 64-d, 4 blocks; every
# configs/<method>/demo_fashion-mnist.py) on the embedded segmentation task: 56x56 mosaics of
# Fashion-MNIST garments, 11 classes. The structure of
# vit-base-p16_upernet_8xb2-160k_ade20k-512x512.py (iBOT's UperNet recipe): BEiT/iBOT
# deconvolution pyramid on all 4 blocks (4x4 patch grid -> 16, 8, 4, 2), UperNet + FCN
# auxiliary head, AdamW with layer-wise lr decay 0.65, linear warm-up then poly, drop-path
# 0.1, sliding-window test. Sized for a CPU: random 28x28 crops (the backbone's pre-training
# size), 32 UperNet channels, 1,000 iterations of 16 crops, a higher lr than ADE20K's
# 160k-iteration 8e-5.
# tools/benchmarks/dense_fashion_mnist.py runs it on our export and on a random backbone.
#
#   --cfg-options model.backbone.init_cfg.checkpoint=work_dirs/<demo run>/backbone.pth
_base_ = [
    'mmseg::_base_/models/upernet_mae.py',
    '../../_base_/datasets/fashion_mnist_mosaic.py',
    'mmseg::_base_/default_runtime.py',
    '../../_base_/schedules/mmseg_demo_poly_1k.py',
]
custom_imports = dict(
    imports=['mmpretrain.models', 'mmselfsup_vmf', 'mmselfsup_vmf.datasets.fashion_mnist_mosaic'],
    allow_failed_imports=False)

pretrained = 'work_dirs/backbone.pth'  # output of extract_backbone.py
crop_size = (28, 28)
num_layers = 4
embed_dims = 64
num_classes = 11
layer_decay_rate = 0.65

data_preprocessor = dict(
    mean=[72.9, 72.9, 72.9],  # the demo pre-training's normalisation
    std=[90.0, 90.0, 90.0],
    bgr_to_rgb=False,
    size=crop_size)
model = dict(
    data_preprocessor=data_preprocessor,
    pretrained=None,
    backbone=dict(
        _delete_=True,
        type='mmpretrain.VisionTransformer',
        arch=dict(embed_dims=embed_dims, num_layers=num_layers, num_heads=4,
                  feedforward_channels=128),
        img_size=crop_size[0],
        patch_size=7,
        out_indices=(0, 1, 2, 3),
        out_type='featmap',
        final_norm=True,
        drop_path_rate=0.1,
        interpolate_mode='bicubic',
        init_cfg=dict(type='Pretrained', checkpoint=pretrained)),
    neck=dict(type='Feature2Pyramid', embed_dim=embed_dims, rescales=[4, 2, 1, 0.5]),
    decode_head=dict(in_channels=[embed_dims] * 4, channels=embed_dims // 2,
                     num_classes=num_classes),
    auxiliary_head=dict(in_channels=embed_dims, channels=embed_dims // 4,
                        num_classes=num_classes),
    test_cfg=dict(mode='slide', crop_size=crop_size, stride=(14, 14)))

# BEiT/iBOT layer decay for 4 blocks, as in the ADE20K config: lr_mult = rate ** (L + 1 -
# depth), depth 0 for the embeddings and i + 1 for block i (the rest: 1). Here a block's
# biases and norms keep the weight decay (one custom key per block, not per parameter).
optim_wrapper = dict(
    type='OptimWrapper',
    optimizer=dict(type='AdamW', lr=1e-3, betas=(0.9, 0.999), weight_decay=0.05),
    paramwise_cfg=dict(
        norm_decay_mult=0.,
        bias_decay_mult=0.,
        custom_keys={
            'backbone.cls_token': dict(lr_mult=layer_decay_rate**(num_layers + 1),
                                       decay_mult=0.),
            'backbone.pos_embed': dict(lr_mult=layer_decay_rate**(num_layers + 1),
                                       decay_mult=0.),
            'backbone.patch_embed': dict(lr_mult=layer_decay_rate**(num_layers + 1)),
            'backbone.layers.0.': dict(lr_mult=layer_decay_rate**num_layers),
            'backbone.layers.1.': dict(lr_mult=layer_decay_rate**(num_layers - 1)),
            'backbone.layers.2.': dict(lr_mult=layer_decay_rate**(num_layers - 2)),
            'backbone.layers.3.': dict(lr_mult=layer_decay_rate**(num_layers - 3)),
        }))
env_cfg = dict(dist_cfg=dict(backend='gloo'))
# a backbone checkpoint that does not fit model.backbone is an error (mmengine only warns)
custom_hooks = [dict(type='PretrainedMatchHook')]
