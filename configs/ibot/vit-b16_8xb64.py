# iBOT ViT-B/16, 400 epochs. Most ViT-B values are reconstructions (the released args.txt could
# not be read; docs/methods.md#dino-and-ibot-recipes), each a config value whose default is the
# likely one: epochs 400, lr 7.5e-4 per 256 (min_lr 1e-6: iBOT's code default), K = 8192 with
# a shared head, teacher temperatures 0.04 -> 0.07 over 30 epochs (iBOT's default warm-up),
# last layer frozen 3 epochs, clip 3.0 per tensor (plausible range 0.3-3.0), drop_path 0.1,
# crops and masking as ViT-S, fp16 (iBOT's default). norm_last_layer=True follows the
# --norm_last_layer help of main_ibot.py in bytedance/ibot at commit
# da316d82636a7a7356835ef224b13d5f3ace0489: unnormalised prototypes are unstable for ViT-B.
_base_ = './vit-s16_8xb64.py'
model = dict(
    backbone=dict(arch='base', drop_path_rate=0.1),
    head=dict(in_channels=768, norm_last_layer=True),
    teacher_temp=dict(start=0.04, end=0.07, warmup_epochs=30),
    teacher_patch_temp=dict(start=0.04, end=0.07, warmup_epochs=30))

max_epochs = 400
warmup_epochs = 10
optim_wrapper = dict(optimizer=dict(lr=7.5e-4),
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
custom_hooks = [dict(type='RandomStateHook'), dict(type='FreezeLastLayerHook', epochs=3)]
