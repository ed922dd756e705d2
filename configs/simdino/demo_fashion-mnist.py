# SimDINO on the CPU demo data: a tiny ViT (patch 4, 96-d, 4 layers) on 28 px Fashion-MNIST.
# The README demo's default method. Same structure as configs/dino/demo_fashion-mnist.py.
_base_ = [
    '../_base_/datasets/fashion_mnist_demo.py',
    '../_base_/schedules/adamw_coslr_coswd.py',
    '../_base_/demo_runtime.py',
]
model = dict(
    type='SimDINO',
    backbone=dict(type='VisionTransformer', img_size=28, patch_size=4, out_type='cls_token',
                  arch=dict(embed_dims=96, num_layers=4, num_heads=3, feedforward_channels=192)),
    # no prototype layer: the head returns the L2-normalised 128-d bottleneck
    head=dict(type='DINOHead', in_channels=96, hidden_channels=512, bottleneck_channels=128,
              num_prototypes=None),
    # eps is the official code's eps (= eps^2 of the paper); rate of (student + teacher)/2
    loss=dict(type='SimDINOLoss', eps=0.05, coeff=1.0, expa_type='mean', reduce_cov=False),
    teacher_momentum=0.99,
    data_preprocessor={{_base_.data_preprocessor}})

max_epochs = 4
warmup_epochs = 1
optim_wrapper = dict(optimizer=dict(lr=1e-3))
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-3, by_epoch=True, begin=0, end=warmup_epochs,
         convert_to_iter_based=True),
    dict(type='CosineAnnealingLR', T_max=max_epochs - warmup_epochs, eta_min=1e-5,
         by_epoch=True, begin=warmup_epochs, end=max_epochs, convert_to_iter_based=True),
    dict(type='CosineAnnealingParamScheduler', param_name='weight_decay', eta_min_ratio=10.0,
         by_epoch=True, begin=0, end=max_epochs, convert_to_iter_based=True),
]
train_cfg = dict(max_epochs=max_epochs)
auto_scale_lr = dict(base_batch_size=128, enable=True)
custom_hooks = [
    dict(type='RandomStateHook'),
    dict(type='KNNHook', train_dataloader={{_base_.knn_train_dataloader}},
         val_dataloader={{_base_.knn_val_dataloader}}, interval=max_epochs, k=20,
         temperature=0.07, before_train=True),
]
