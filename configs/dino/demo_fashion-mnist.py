# DINO on the CPU demo data: a tiny ViT (patch 7, 64-d, 4 layers) on 28 px Fashion-MNIST.
_base_ = [
    '../_base_/datasets/fashion_mnist_demo.py',
    '../_base_/schedules/demo_adamw_3e.py',
    '../_base_/demo_runtime.py',
]
num_prototypes = 256
model = dict(
    type='DINO',
    backbone=dict(type='VisionTransformer', img_size=28, patch_size=7, out_type='cls_token',
                  arch=dict(embed_dims=64, num_layers=4, num_heads=4, feedforward_channels=128)),
    head=dict(type='DINOHead', in_channels=64, hidden_channels=256, bottleneck_channels=64,
              num_prototypes=num_prototypes, norm_last_layer=True),
    loss=dict(type='DINOLoss', num_prototypes=num_prototypes, dim=64, centering='logit'),
    teacher_momentum=0.99,
    teacher_temp=dict(start=0.04, end=0.04, warmup_epochs=0),
    data_preprocessor={{_base_.data_preprocessor}})

max_epochs = 3
optim_wrapper = dict(optimizer=dict(lr=1e-3))
custom_hooks = [
    dict(type='RandomStateHook'),
    dict(type='FreezeLastLayerHook', epochs=0),
    dict(type='KNNHook', train_dataloader={{_base_.knn_train_dataloader}},
         val_dataloader={{_base_.knn_val_dataloader}}, interval=max_epochs, k=20,
         temperature=0.07, before_train=True),
]
