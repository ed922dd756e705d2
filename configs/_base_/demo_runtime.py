# Short CPU runs: log every 10 iterations, checkpoint every epoch, no TensorBoard dependency
# needed (it is installed, so it is on), k-NN before and after training.
_base_ = ['./default_runtime.py']
default_hooks = dict(
    logger=dict(type='LoggerHook', interval=10),
    checkpoint=dict(type='FaultTolerantCheckpointHook', interval=1, max_keep_ckpts=2,
                    save_last=True))
env_cfg = dict(dist_cfg=dict(backend='gloo'))
