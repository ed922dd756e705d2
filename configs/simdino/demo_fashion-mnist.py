# SimDINO on the CPU demo data: a tiny ViT (patch 7, 64-d, 4 layers) on 28 px Fashion-MNIST.
# The README demo's default method. Same structure as configs/dino/demo_fashion-mnist.py.
_base_ = [
    '../_base_/datasets/fashion_mnist_demo.py',
    '../_base_/schedules/demo_adamw_3e.py',
    '../_base_/demo_runtime.py',
]
model = dict(
    type='SimDINO',
    backbone=dict(type='VisionTransformer', img_size=28, patch_size=7, out_type='cls_token',
                  arch=dict(embed_dims=64, num_layers=4, num_heads=4, feedforward_channels=128)),
    # no prototype layer: the head returns the L2-normalised 64-d bottleneck
    head=dict(type='DINOHead', in_channels=64, hidden_channels=256, bottleneck_channels=64,
              num_prototypes=None),
    # eps is the official code's eps (= eps^2 of the paper); rate of (student + teacher)/2
    loss=dict(type='SimDINOLoss', eps=0.05, coeff=1.0, expa_type='mean', reduce_cov=False),
    teacher_momentum=0.9,  # fast teacher for a 3-epoch run (SimDINOv2 also starts at 0.9)
    data_preprocessor={{_base_.data_preprocessor}})

max_epochs = 3
optim_wrapper = dict(optimizer=dict(lr=3e-3))
custom_hooks = [
    dict(type='RandomStateHook'),
    dict(type='KNNHook', train_dataloader={{_base_.knn_train_dataloader}},
         val_dataloader={{_base_.knn_val_dataloader}}, interval=max_epochs, k=20,
         temperature=0.07, before_train=True),
]
