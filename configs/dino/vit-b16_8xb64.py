# DINO ViT-B/16, the published 400-epoch recipe: normalised prototypes (norm_last_layer=True;
# unnormalised ones are unstable for ViT-B in plain DINO), clip 3.0 per tensor, last layer
# frozen 3 epochs, teacher temperature 0.04 -> 0.07 over 50 epochs. Published total batch
# 1024 (32 x 32); here 8 x 64 = 512 with auto-scaled lr.
_base_ = './vit-s16_8xb64.py'
model = dict(
    backbone=dict(arch='base', drop_path_rate=0.1),
    head=dict(in_channels=768, norm_last_layer=True),
    teacher_temp=dict(start=0.04, end=0.07, warmup_epochs=50))

max_epochs = 400
warmup_epochs = 10
optim_wrapper = dict(optimizer=dict(lr=7.5e-4),
                     clip_grad=dict(_delete_=True, type='per_tensor', max_norm=3.0))
param_scheduler = [
    dict(type='LinspaceLR', start_factor=0.0, by_epoch=True, begin=0, end=warmup_epochs,
         convert_to_iter_based=True),
    dict(type='CosineAnnealingLR', T_max=max_epochs - warmup_epochs, eta_min=2e-6,
         by_epoch=True, begin=warmup_epochs, end=max_epochs, convert_to_iter_based=True),
    dict(type='CosineAnnealingParamScheduler', param_name='weight_decay', eta_min_ratio=10.0,
         by_epoch=True, begin=0, end=max_epochs, convert_to_iter_based=True),
]
train_cfg = dict(max_epochs=max_epochs)
custom_hooks = [dict(type='RandomStateHook'), dict(type='FreezeLastLayerHook', epochs=3)]
