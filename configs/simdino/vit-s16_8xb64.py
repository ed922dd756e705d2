# SimDINO ViT-S/16 (Wu et al. 2025, arXiv:2502.10385), the SimDINO ViT-B/16 recipe
# (docs/simdino.md#simdino-vit-b16-recipe) with ViT-S: 100 epochs, 8 x 64 = 512 images, AdamW lr
# 5e-4 x 512/256, 10 warm-up epochs, cosine to 1e-6, weight decay cosine 0.04 -> 0.4, per-tensor
# clipping 3.0, teacher EMA 0.996 -> 1, 2 x 224 (scale 0.4-1) + 10 x 96 (0.05-0.4) crops, fp16
# autocast. The official repo only runs ViT-S in ablations; the paper presumably reuses the
# ViT-B settings.
_base_ = [
    '../_base_/datasets/imagenet_multicrop.py',
    '../_base_/schedules/adamw_coslr_coswd.py',
    '../_base_/default_runtime.py',
]
model = dict(
    type='SimDINO',
    # SimDINO builds on DINO's ViT: interpolate_offset 0.1, no mask token
    backbone=dict(type='MaskedViT', arch='deit-small', img_size=224, patch_size=16,
                  drop_path_rate=0.1, out_type='cls_token', pos_embed_offset=0.1,
                  with_mask_token=False),
    # 3-layer MLP 2048-2048-256, GELU, no BN, L2-normalised, no prototype layer
    head=dict(type='DINOHead', in_channels=384, hidden_channels=2048, bottleneck_channels=256,
              num_prototypes=None),
    # eps is the official --eps (= eps^2 of the paper); 'mean' = official expa_type 1;
    # reduce_cov=False is the official per-rank covariance (alpha, gamma from the global n)
    loss=dict(type='SimDINOLoss', eps=0.05, coeff=1.0, expa_type='mean', gamma=None,
              reduce_cov=False),
    num_global_views=2,
    teacher_momentum=0.996,
    backbone_init='dino',  # DINO's trunc-normal(0.02) linears and CLS token
    data_preprocessor={{_base_.data_preprocessor}})

# SimDINO's crop scales (DINO's defaults): globals (0.4, 1), locals (0.05, 0.4)
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='MultiCrop', num_global=2, num_local=10, global_size=224, local_size=96,
         global_scale=(0.4, 1.0), local_scale=(0.05, 0.4), global_blur_probs=(1.0, 0.1),
         local_blur_prob=0.5, solarize_prob=0.2, interpolation='bicubic'),
    dict(type='PackInputs'),
]
train_dataloader = dict(batch_size=64, dataset=dict(dataset=dict(pipeline=train_pipeline)))

max_epochs = 100
warmup_epochs = 10
# fp16 autocast + dynamic loss scaling as the official run; the coding rate is evaluated in
# fp32 outside autocast. The same runs on a CPU (torch's CPU autocast and loss scaler);
# type='DistillOptimWrapper' trains in fp32.
optim_wrapper = dict(
    type='AmpDistillOptimWrapper', dtype='float16', loss_scale='dynamic',
    optimizer=dict(lr=5e-4, fused=True),  # the overflow check stays on the device
    clip_grad=dict(_delete_=True, type='per_tensor', max_norm=3.0))
param_scheduler = [
    dict(type='LinspaceLR', start_factor=0.0, by_epoch=True, begin=0, end=warmup_epochs,
         convert_to_iter_based=True),
    dict(type='CosineAnnealingLR', T_max=max_epochs - warmup_epochs, eta_min=1e-6,
         by_epoch=True, begin=warmup_epochs, end=max_epochs, convert_to_iter_based=True),
    dict(type='CosineAnnealingParamScheduler', param_name='weight_decay', eta_min_ratio=10.0,
         by_epoch=True, begin=0, end=max_epochs, convert_to_iter_based=True),
]
train_cfg = dict(max_epochs=max_epochs)
# lr above is per 256 images: 1e-3 at the published 8 x 64
auto_scale_lr = dict(base_batch_size=256, enable=True)
custom_hooks = [dict(type='RandomStateHook')]  # no last layer to freeze
