# iBOT ViT-S/16 (Zhou et al. 2022), the published 800-epoch recipe (iBOT README / main_ibot.py):
# K = 8192 with the head shared by CLS and patch tokens, unnormalised prototypes, teacher CLS
# and patch temperatures 0.04 -> 0.07 over 30 epochs, block masking of the student's global
# crops with pred_ratio {0, 0.3 +- 0.2}, clip 3.0 per tensor, last layer frozen 1 epoch,
# lr 5e-4 per 256 -> min 1e-6, fp16. 2 global (0.25, 1) + 10 local (0.05, 0.25) crops (from
# the ImageNet multi-crop base). Total batch 8 x 64 = 512 (published 16 x 64); auto_scale_lr.
_base_ = '../dino/vit-s16_8xb64.py'
num_prototypes = 8192
mask_args = dict(
    patch_size=16, num_global_views=2, mask_mode='ibot',
    mask_cfg=dict(pred_ratio=(0.0, 0.3), pred_ratio_var=(0.0, 0.2), pred_shape='block'),
    mask_start_epoch=0)
model = dict(
    type='iBOT',
    # mask_token_std=0: iBOT leaves its mask embedding at zero
    backbone=dict(type='MaskedViT', out_type='raw', mask_token_std=0.0, with_mask_token=True),
    head=dict(num_prototypes=num_prototypes, num_patch_prototypes=None,  # shared head
              norm_last_layer=False),
    loss=dict(num_prototypes=num_prototypes, centering='logit', vmf=False),
    patch_loss=dict(type='iBOTPatchLoss', num_prototypes=num_prototypes, student_temp=0.1,
                    center_momentum=0.9, centering='logit', vmf=False, dim=256),
    teacher_temp=dict(start=0.04, end=0.07, warmup_epochs=30),
    teacher_patch_temp=dict(start=0.04, end=0.07, warmup_epochs=30),
    shared_head_teacher=True,
    lambda_cls=1.0,
    lambda_patch=1.0,
    data_preprocessor=dict(type='MaskedSelfSupDataPreprocessor', **mask_args))
# the loader workers draw the masks (masked_collate); the data preprocessor checks the law
train_dataloader = dict(collate_fn=dict(type='masked_collate', **mask_args))

max_epochs = 800
warmup_epochs = 10
# fp16 with dynamic loss scaling as iBOT's --use_fp16 default (also on a CPU; fp32:
# optim_wrapper.type=DistillOptimWrapper; bf16: dtype='bfloat16')
optim_wrapper = dict(type='AmpDistillOptimWrapper', loss_scale='dynamic',
                     optimizer=dict(lr=5e-4, fused=True),
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
custom_hooks = [dict(type='RandomStateHook'), dict(type='FreezeLastLayerHook', epochs=1)]
default_hooks = dict(prototype_monitor=dict(type='PrototypeMonitorHook'))  # logger's interval
