# The study's common budget: DINO's optimisation (AdamW, linear warm-up then cosine lr,
# weight decay cosine 0.04 -> 0.4, per-tensor clipping) over `max_epochs` epochs of the full
# training set; the lr is per 64 images (the batch). Logs every 100 iterations, k-NN on the
# full split after every epoch, checkpoint (last only) every epoch so a killed run resumes.
_base_ = ['../../../_base_/schedules/adamw_coslr_coswd.py', '../../../_base_/demo_runtime.py']
max_epochs = 4
warmup_epochs = 1
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-3, by_epoch=True, begin=0, end=warmup_epochs,
         convert_to_iter_based=True),
    dict(type='CosineAnnealingLR', T_max=max_epochs - warmup_epochs, eta_min=1e-5,
         by_epoch=True, begin=warmup_epochs, end=max_epochs, convert_to_iter_based=True),
    dict(type='CosineAnnealingParamScheduler', param_name='weight_decay', eta_min_ratio=10.0,
         by_epoch=True, begin=0, end=max_epochs, convert_to_iter_based=True),
]
train_cfg = dict(max_epochs=max_epochs)
auto_scale_lr = dict(base_batch_size=64, enable=True)
default_hooks = dict(
    logger=dict(type='LoggerHook', interval=100),
    checkpoint=dict(type='CheckpointHook', interval=1, max_keep_ckpts=1, save_last=True))
