# SimDINOv2 on the CPU demo data: a tiny MaskedViT (patch 7 -> 4x4 grid, 64-d, 4 layers,
# 4 registers, LayerScale 0.1; no drop-path at this size) on 28 px Fashion-MNIST. Half of the
# global crops are block-masked (stratified ratios 0.1-0.5); one head for CLS and masked patch
# tokens; layer-wise lr decay 0.9 and patch-embed lr x 0.2, as the ImageNet recipe.
# Same structure as configs/dino/demo_fashion-mnist.py.
_base_ = [
    '../_base_/datasets/fashion_mnist_demo.py',
    '../_base_/schedules/demo_adamw_3e.py',
    '../_base_/demo_runtime.py',
]
mask_args = dict(patch_size=7, mask_mode='stratified',
                 mask_cfg=dict(mask_probability=0.5, ratio_range=(0.1, 0.5)))
model = dict(
    type='SimDINOv2',
    backbone=dict(type='MaskedViT', img_size=28, patch_size=7, out_type='raw',
                  arch=dict(embed_dims=64, num_layers=4, num_heads=4, feedforward_channels=128),
                  num_register_tokens=4, layer_scale_init_value=0.1, drop_path_rate=0.0,
                  drop_path_uniform=True, mask_token_std=0.0, pos_embed_antialias=True),
    head=dict(type='DINOHead', in_channels=64, hidden_channels=256, bottleneck_channels=64,
              num_prototypes=None),
    loss=dict(type='SimDINOLoss', eps=0.05, coeff=1.0, expa_type='mean', reduce_cov=False),
    patch_loss_weight=1.0,
    teacher_momentum=0.9,  # the SimDINOv2 schedule 0.9 -> 1
    data_preprocessor=dict(
        type='MaskedSelfSupDataPreprocessor', mean=[72.9, 72.9, 72.9], std=[90.0, 90.0, 90.0],
        to_rgb=False, **mask_args))
# the loader workers draw the masks (masked_collate); the data preprocessor checks the law
train_dataloader = dict(collate_fn=dict(type='masked_collate', **mask_args))

max_epochs = 3
optim_wrapper = dict(
    optimizer=dict(lr=3e-3),
    # one global norm (the official code clips backbone and head apart: type='per_module')
    clip_grad=dict(_delete_=True, max_norm=3.0),
    constructor='LayerDecayOptimWrapperConstructor',
    paramwise_cfg=dict(layer_decay_rate=0.9,
                       custom_keys={'backbone.patch_embed': dict(lr_mult=0.2)}))
custom_hooks = [
    dict(type='RandomStateHook'),
    dict(type='KNNHook', train_dataloader={{_base_.knn_train_dataloader}},
         val_dataloader={{_base_.knn_val_dataloader}}, interval=max_epochs, k=20,
         temperature=0.07, before_train=True),
]
