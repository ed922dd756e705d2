# DINO ViT-S/16 (Caron et al. 2021, arXiv:2104.14294), the published 800-epoch recipe; which
# values are reconstructions is listed in docs/methods.md#dino-and-ibot-recipes.
# Total batch 8 x 64 = 512; the published run used 16 x 64 = 1024 — auto_scale_lr rescales
# the learning rate to whatever total batch you launch with.
_base_ = [
    '../_base_/datasets/imagenet_multicrop.py',
    '../_base_/schedules/adamw_coslr_coswd.py',
    '../_base_/default_runtime.py',
]
num_prototypes = 65536
model = dict(
    type='DINO',
    # mmpretrain's ViT with DINO's position-embedding interpolation for the local crops
    # (interpolate_offset 0.1) and no mask token (DINO never masks)
    backbone=dict(type='MaskedViT', arch='deit-small', img_size=224, patch_size=16,
                  drop_path_rate=0.1, out_type='cls_token', pos_embed_offset=0.1,
                  with_mask_token=False),
    head=dict(type='DINOHead', in_channels=384, hidden_channels=2048, bottleneck_channels=256,
              num_prototypes=num_prototypes, norm_last_layer=False),
    loss=dict(type='DINOLoss', num_prototypes=num_prototypes, student_temp=0.1,
              center_momentum=0.9, centering='logit', vmf=False, dim=256),
    num_global_views=2,
    teacher_momentum=0.996,
    teacher_temp=dict(start=0.04, end=0.07, warmup_epochs=30),
    backbone_init='dino',  # DINO's trunc-normal(0.02) linears and CLS token
    data_preprocessor={{_base_.data_preprocessor}})

max_epochs = 800
warmup_epochs = 10
# fp16 autocast with dynamic loss scaling, as DINO's --use_fp16 default (mmengine's
# AmpOptimWrapper on a GPU; on a CPU-only machine torch's CPU autocast and scaler, so tests
# and smoke runs still work). fp32: optim_wrapper.type=DistillOptimWrapper (TF32 matmuls
# unless allow_tf32=False); bf16: optim_wrapper.dtype=bfloat16.
optim_wrapper = dict(type='AmpDistillOptimWrapper', dtype='float16', loss_scale='dynamic',
                     # fused AdamW: the same update, with the overflow check on the device
                     optimizer=dict(lr=5e-4, fused=True),
                     clip_grad=None)  # DINO ViT-S: no clipping
param_scheduler = [
    dict(type='LinspaceLR', start_factor=0.0, by_epoch=True, begin=0, end=warmup_epochs,
         convert_to_iter_based=True),
    dict(type='CosineAnnealingLR', T_max=max_epochs - warmup_epochs, eta_min=1e-5,
         by_epoch=True, begin=warmup_epochs, end=max_epochs, convert_to_iter_based=True),
    dict(type='CosineAnnealingParamScheduler', param_name='weight_decay', eta_min_ratio=10.0,
         by_epoch=True, begin=0, end=max_epochs, convert_to_iter_based=True),
]
train_cfg = dict(max_epochs=max_epochs)
custom_hooks = [dict(type='RandomStateHook'), dict(type='FreezeLastLayerHook', epochs=1)]
