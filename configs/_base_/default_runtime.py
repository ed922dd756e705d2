default_scope = 'mmpretrain'
# registers this plugin's classes in mmpretrain's registries
custom_imports = dict(imports=['mmselfsup_vmf'], allow_failed_imports=False)

default_hooks = dict(
    # mmengine's RuntimeInfoHook, reading the loss terms only on logging iterations
    runtime_info=dict(type='LoggedRuntimeInfoHook'),
    timer=dict(type='IterTimerHook'),
    logger=dict(type='LoggerHook', interval=50),
    param_scheduler=dict(type='ParamSchedulerHook'),
    # mmengine's CheckpointHook with atomic writes and removal after the new save
    checkpoint=dict(type='FaultTolerantCheckpointHook', interval=10, max_keep_ckpts=3,
                    save_last=True),
    sampler_seed=dict(type='DistSamplerSeedHook'),
    # epoch/iteration/run length -> the model's schedules (teacher temperature, EMA, masks)
    train_progress=dict(type='TrainProgressHook'),
    # a default hook (not a custom one) so configs that restate custom_hooks keep it
    divergence=dict(type='DivergenceGuardHook'),
    unreadable_samples=dict(type='UnreadableSampleHook'),  # SeededDataset(skip_bad_samples)
    stop_on_signal=dict(type='StopOnSignalHook'),  # SIGTERM/SIGINT: save and exit
)
# RNG states go into checkpoints so that --resume continues exactly
custom_hooks = [dict(type='RandomStateHook')]

env_cfg = dict(
    cudnn_benchmark=False,
    mp_cfg=dict(mp_start_method='fork', opencv_num_threads=0),
    dist_cfg=dict(backend='nccl'),
)
# TF32 tensor cores for float32 matmuls on Ampere+ GPUs (tools/train.py sets torch's flags;
# PyTorch's default from 1.7 to 1.11, which DINO was developed on; DINOv2 sets it).
# False: strict float32. (Not in env_cfg: FlexibleRunner passes env_cfg to its strategy.)
allow_tf32 = True
vis_backends = [dict(type='LocalVisBackend'), dict(type='TensorboardVisBackend')]
visualizer = dict(type='UniversalVisualizer', vis_backends=vis_backends)
log_processor = dict(window_size=10)
log_level = 'INFO'
load_from = None
resume = False
# diff_rank_seed=False: every rank draws the same drop-path masks, as DINO v1 and iBOT do;
# True: seed + rank on each rank, as DINOv2 seeds (mmengine's switch). Initial weights are
# rank 0's either way (mmengine broadcasts them after init_weights, DDP and FSDP2 alike);
# crops and masks differ per rank in both cases (they are seeded per sample).
randomness = dict(seed=0, diff_rank_seed=False, deterministic=False)
