# The study's common schedule: the CPU demos' (DINO's optimisation: AdamW, linear warm-up then
# cosine lr, weight decay cosine 0.04 -> 0.4, per-tensor clipping; lr per 64 images), whose
# epoch budget tools/benchmarks/small_scale.py sets per experiment. Logs every 100 iterations
# and keeps the last checkpoint of every epoch, so a stopped run resumes.
_base_ = ['../../../_base_/schedules/demo_adamw_3e.py', '../../../_base_/demo_runtime.py']
default_hooks = dict(
    logger=dict(type='LoggerHook', interval=100),
    checkpoint=dict(type='CheckpointHook', interval=1, max_keep_ckpts=1, save_last=True))
