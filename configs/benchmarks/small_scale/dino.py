# DINO, small-scale study: a small ViT (patch 7 -> 4x4 grid, 28 px) on all of Fashion-MNIST.
# The model keeps DINO's structure (MLP head with a weight-normalised prototype layer, logit
# centring, teacher temperature warm-up, cosine teacher momentum); sizes and lr come from the
# measured sweep in docs/benchmarks.md. DINO-vMF and iBOT inherit this file.
_base_ = ['./_base_/fashion_mnist_full.py', './_base_/schedule.py']
embed_dims = 64
num_prototypes = 1024
bottleneck = 64
model = dict(
    type='DINO',
    backbone=dict(type='VisionTransformer', img_size=28, patch_size=7, out_type='cls_token',
                  arch=dict(embed_dims=embed_dims, num_layers=4, num_heads=4,
                            feedforward_channels=2 * embed_dims)),
    head=dict(type='DINOHead', in_channels=embed_dims, hidden_channels=256,
              bottleneck_channels=bottleneck, num_prototypes=num_prototypes,
              norm_last_layer=True),
    loss=dict(type='DINOLoss', num_prototypes=num_prototypes, dim=bottleneck,
              centering='logit'),
    teacher_momentum=0.99,
    teacher_temp=dict(start=0.04, end=0.07, warmup_epochs=1),
    data_preprocessor={{_base_.data_preprocessor}})

optim_wrapper = dict(optimizer=dict(lr=1e-3))
custom_hooks = [
    dict(type='RandomStateHook'),
    dict(type='FreezeLastLayerHook', epochs=0),
    dict(type='KNNHook', train_dataloader={{_base_.knn_train_dataloader}},
         val_dataloader={{_base_.knn_val_dataloader}}, interval=1, k=20, temperature=0.07,
         before_train=True),
]
default_hooks = dict(prototype_monitor=dict(type='PrototypeMonitorHook', interval=50))
