# SimDINOv2 ViT-L/16 as vit-l16_8xb128.py, with student and teacher sharded over the GPUs by
# FSDP2: mmengine's FlexibleRunner with this project's FSDP2Strategy
# (docs/benchmarks.md#fsdp-sharded-training-fsdp2strategy). Per GPU it holds 1/8 of the fp32
# weights, gradients, AdamW states and EMA teacher. FSDP's mixed-precision policy gathers the
# weights in bf16 for the forward and backward and reduces gradients in fp32, so the
# optimiser wrapper needs no autocast. Checkpoints are full (unsharded) mmengine checkpoints.
#   tools/dist_train.sh configs/simdinov2/vit-l16_8xb128_fsdp.py 8
_base_ = './vit-l16_8xb128.py'
runner_type = 'FlexibleRunner'
strategy = dict(type='FSDP2Strategy',
                mixed_precision=dict(param_dtype='bfloat16', reduce_dtype='float32'))
optim_wrapper = dict(
    _delete_=True,
    type='DistillOptimWrapper',
    constructor='LayerDecayOptimWrapperConstructor',
    optimizer=dict(type='AdamW', lr=4e-3, betas=(0.9, 0.999), weight_decay=0.04),
    clip_grad=dict(type='per_module', max_norm=3.0),  # backbone and head separately
    paramwise_cfg=dict(bias_decay_mult=0.0, norm_decay_mult=0.0, flat_decay_mult=0.0,
                       layer_decay_rate=0.9,
                       custom_keys={'backbone.patch_embed': dict(lr_mult=0.2)}))
