# The SimDINOv2 CPU demo under FSDP: mmengine's FlexibleRunner with FSDP2Strategy over gloo
# (fp32 on a CPU), e.g. on 2 processes (docs/benchmarks.md#fsdp-sharded-training-fsdp2strategy):
#   python -m torch.distributed.run --nproc_per_node=2 tools/train.py \
#       configs/simdinov2/demo_fashion-mnist_fsdp.py --launcher pytorch
# The batch per process is half the demo's, so the global batch stays 64.
_base_ = './demo_fashion-mnist.py'
runner_type = 'FlexibleRunner'
strategy = dict(type='FSDP2Strategy')
env_cfg = dict(dist_cfg=dict(backend='gloo'))
train_dataloader = dict(batch_size=32)
