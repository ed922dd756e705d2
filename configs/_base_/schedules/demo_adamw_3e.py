# The CPU demos' schedule: DINO's optimisation (adamw_coslr_coswd.py) shortened to 3 epochs
# with 1 warm-up epoch; the lr is per 64 images (the demo batch).
_base_ = ['./adamw_coslr_coswd.py']
max_epochs = 3
warmup_epochs = 1
param_scheduler = [
    dict(type='LinspaceLR', start_factor=0.0, by_epoch=True, begin=0, end=warmup_epochs,
         convert_to_iter_based=True),
    dict(type='CosineAnnealingLR', T_max=max_epochs - warmup_epochs, eta_min=1e-5,
         by_epoch=True, begin=warmup_epochs, end=max_epochs, convert_to_iter_based=True),
    dict(type='CosineAnnealingParamScheduler', param_name='weight_decay', eta_min_ratio=10.0,
         by_epoch=True, begin=0, end=max_epochs, convert_to_iter_based=True),
]
train_cfg = dict(max_epochs=max_epochs)
auto_scale_lr = dict(base_batch_size=64, enable=True)
