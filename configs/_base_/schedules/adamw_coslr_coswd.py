# DINO's optimisation: AdamW, lr = base x total_batch / 256 (linear warm-up from exactly 0 as
# DINO's np.linspace, mmselfsup_vmf/engine/schedulers.py; then cosine to min_lr),
# weight decay cosine 0.04 -> 0.4 on the decayed group only (bias and 1-D params stay at 0),
# gradient clipping per parameter tensor, all updated per iteration.
max_epochs = 100
warmup_epochs = 10
optim_wrapper = dict(
    type='DistillOptimWrapper',
    constructor='DistillOptimWrapperConstructor',  # one log line for the frozen teacher
    optimizer=dict(type='AdamW', lr=5e-4, betas=(0.9, 0.999), weight_decay=0.04),
    clip_grad=dict(type='per_tensor', max_norm=3.0),
    paramwise_cfg=dict(bias_decay_mult=0.0, norm_decay_mult=0.0, flat_decay_mult=0.0))
param_scheduler = [
    dict(type='LinspaceLR', start_factor=0.0, by_epoch=True, begin=0, end=warmup_epochs,
         convert_to_iter_based=True),
    dict(type='CosineAnnealingLR', T_max=max_epochs - warmup_epochs, eta_min=1e-6,
         by_epoch=True, begin=warmup_epochs, end=max_epochs, convert_to_iter_based=True),
    # eta_min_ratio (not eta_min) keeps the zero-decay groups at 0
    dict(type='CosineAnnealingParamScheduler', param_name='weight_decay', eta_min_ratio=10.0,
         by_epoch=True, begin=0, end=max_epochs, convert_to_iter_based=True),
]
train_cfg = dict(type='EpochBasedTrainLoop', max_epochs=max_epochs)
# the optimizer lr above is per 256 images; mmengine scales it to the real total batch
auto_scale_lr = dict(base_batch_size=256, enable=True)
