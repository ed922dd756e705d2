# SimDINOv2 ViT-B/16 (Wu et al. 2025), the official simdino_config.yaml with arch vit_base
# (docs/simdino.md#simdinov2-recipe): 100 epochs, 8 x 128 = 1024 images, AdamW lr 4e-3, 10 warm-up
# epochs, cosine to 1e-6, layer-wise lr decay 0.9 (blocks 0.9^(L - i), embeddings 0.9^(L+1),
# final norm and head 1), patch embedding lr x 0.2, weight decay cosine 0.04 -> 0.4 (none on
# biases, norms and LayerScale), teacher EMA 0.9 -> 1, clipping 3.0 (the backbone's and the
# head's gradient norms separately), bf16 autocast.
# ViT: 4 registers, LayerScale 0.1, drop-path 0.2 on every block, antialiased pos-embed
# resizing. Half of the global crops block-masked (stratified ratios 0.1-0.5), one shared head
# for CLS and masked patch tokens. Published: 78.1 k-NN / 79.7 linear on ImageNet-1k.
_base_ = [
    '../_base_/datasets/imagenet_multicrop.py',
    '../_base_/schedules/adamw_coslr_coswd.py',
    '../_base_/default_runtime.py',
]
mask_args = dict(patch_size=16, num_global_views=2, mask_mode='stratified',
                 mask_cfg=dict(mask_probability=0.5, ratio_range=(0.1, 0.5)))
model = dict(
    type='SimDINOv2',
    backbone=dict(type='MaskedViT', arch='base', img_size=224, patch_size=16, out_type='raw',
                  num_register_tokens=4, layer_scale_init_value=0.1, drop_path_rate=0.2,
                  drop_path_uniform=True, mask_token_std=0.0, pos_embed_antialias=True),
    head=dict(type='DINOHead', in_channels=768, hidden_channels=2048, bottleneck_channels=256,
              num_prototypes=None),
    loss=dict(type='SimDINOLoss', eps=0.05, coeff=1.0, expa_type='mean', gamma=None,
              reduce_cov=False),
    patch_loss_weight=1.0,
    num_global_views=2,
    teacher_momentum=0.9,
    backbone_init='dinov2',  # DINOv2's trunc-normal(0.02) linears, CLS token normal(1e-6)
    data_preprocessor=dict(
        type='MaskedSelfSupDataPreprocessor', mean=[123.675, 116.28, 103.53],
        std=[58.395, 57.12, 57.375], to_rgb=True, **mask_args))

# DINOv2 augmentations with SimDINOv2's crop scales (0.4-1 / 0.05-0.4): torchvision's
# kernel-9 Gaussian blur (blur='kernel9') with the probabilities as intended (1.0 / 0.1 /
# 0.5; SimDINOv2 fixed DINOv2's inversion, docs/methods.md#simdinov2-augmentations)
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='MultiCrop', num_global=2, num_local=10, global_size=224, local_size=96,
         global_scale=(0.4, 1.0), local_scale=(0.05, 0.4), global_blur_probs=(1.0, 0.1),
         local_blur_prob=0.5, solarize_prob=0.2, interpolation='bicubic', blur='kernel9'),
    dict(type='PackInputs'),
]
# the loader workers draw the masks (masked_collate); the data preprocessor checks the law
train_dataloader = dict(batch_size=128, collate_fn=dict(type='masked_collate', **mask_args),
                        dataset=dict(dataset=dict(pipeline=train_pipeline)))

max_epochs = 100
warmup_epochs = 10
base_lr = 4e-3  # official base_lr 4e-3 x sqrt(total batch / 1024)
min_lr = 1e-6
optim_wrapper = dict(
    type='AmpDistillOptimWrapper', dtype='bfloat16', loss_scale='dynamic',
    optimizer=dict(lr=base_lr),
    # the global norm of the backbone's and of the head's gradients, each clipped separately
    # (the official FSDP clip_grad_norm_ per student module); type='norm': one global norm
    clip_grad=dict(_delete_=True, type='per_module', max_norm=3.0),
    constructor='LayerDecayOptimWrapperConstructor',
    paramwise_cfg=dict(layer_decay_rate=0.9,
                       custom_keys={'backbone.patch_embed': dict(lr_mult=0.2)}))
param_scheduler = [
    # DINOv2's CosineScheduler warm-up: min_lr + (lr - min_lr) x it / W, the peak at W
    dict(type='LinspaceLR', start_factor=min_lr / base_lr, endpoint=False, by_epoch=True,
         begin=0, end=warmup_epochs, convert_to_iter_based=True),
    # ratio, not an absolute eta_min: each layer group ends at 1e-6 x its lr multiplier
    dict(type='CosineAnnealingLR', T_max=max_epochs - warmup_epochs,
         eta_min_ratio=min_lr / base_lr, by_epoch=True, begin=warmup_epochs, end=max_epochs,
         convert_to_iter_based=True),
    dict(type='CosineAnnealingParamScheduler', param_name='weight_decay', eta_min_ratio=10.0,
         by_epoch=True, begin=0, end=max_epochs, convert_to_iter_based=True),
]
train_cfg = dict(max_epochs=max_epochs)
# The official rule is lr = 4e-3 x sqrt(batch / 1024); mmengine only scales linearly, so
# automatic scaling is off: at a total batch B != 1024 set optimizer.lr = 4e-3 * sqrt(B/1024).
auto_scale_lr = dict(base_batch_size=1024, enable=False)
custom_hooks = [dict(type='RandomStateHook')]
# DINOv2 seeds every rank with seed + rank (its drop-path draws differ per rank)
randomness = dict(diff_rank_seed=True)
