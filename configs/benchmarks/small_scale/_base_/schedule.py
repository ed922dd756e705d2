# The study's common schedule: the CPU demos' (DINO's optimisation: AdamW, linear warm-up then
# cosine lr, weight decay cosine 0.04 -> 0.4, per-tensor clipping; lr per 64 images), whose
# epoch budget tools/benchmarks/small_scale.py sets per experiment. Logs every 100 iterations
# and keeps the last checkpoint of every epoch, so a stopped run resumes.
_base_ = ['../../../_base_/schedules/demo_adamw_3e.py', '../../../_base_/demo_runtime.py']
default_hooks = dict(
    logger=dict(type='LoggerHook', interval=100),
    checkpoint=dict(type='CheckpointHook', interval=1, max_keep_ckpts=1, save_last=True))
# The study's runs were made with the warm-up starting at 1e-3 x peak (mmengine's LinearLR);
# it stays so, so that every row of the study shares one schedule. The demos now start at 0
# as DINO (LinspaceLR); tools/benchmarks/small_scale_run.py sets the phase lengths.
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-3, by_epoch=True, begin=0, end=1,
         convert_to_iter_based=True),
    dict(type='CosineAnnealingLR', T_max=2, eta_min=1e-5, by_epoch=True, begin=1, end=3,
         convert_to_iter_based=True),
    dict(type='CosineAnnealingParamScheduler', param_name='weight_decay', eta_min_ratio=10.0,
         by_epoch=True, begin=0, end=3, convert_to_iter_based=True),
]
