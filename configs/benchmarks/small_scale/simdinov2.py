# SimDINOv2, small-scale study: the same ViT width/depth/patch as ./simdino.py as a MaskedViT
# with 4 registers and LayerScale 0.1; half of the global crops block-masked (ratios 0.1-0.5);
# one head for CLS and masked patch tokens; layer-wise lr decay 0.9 and patch-embed lr x 0.2
# and global-norm clipping, as the ImageNet recipe.
_base_ = ['./_base_/fashion_mnist_full.py', './_base_/schedule.py']
embed_dims = 64
patch_size = 7
mask_args = dict(patch_size=patch_size, mask_mode='stratified',
                 mask_cfg=dict(mask_probability=0.5, ratio_range=(0.1, 0.5)))
model = dict(
    type='SimDINOv2',
    backbone=dict(type='MaskedViT', img_size=28, patch_size=patch_size, out_type='raw',
                  arch=dict(embed_dims=embed_dims, num_layers=4, num_heads=4,
                            feedforward_channels=2 * embed_dims),
                  num_register_tokens=4, layer_scale_init_value=0.1, drop_path_rate=0.0,
                  drop_path_uniform=True, mask_token_std=0.0, pos_embed_antialias=True),
    head=dict(type='DINOHead', in_channels=embed_dims, hidden_channels=256,
              bottleneck_channels=64, num_prototypes=None),
    loss=dict(type='SimDINOLoss', eps=0.05, coeff=1.0, expa_type='mean', reduce_cov=False),
    patch_loss_weight=1.0,
    teacher_momentum=0.99,
    data_preprocessor=dict(
        type='MaskedSelfSupDataPreprocessor', mean=[72.9, 72.9, 72.9], std=[90.0, 90.0, 90.0],
        to_rgb=False, **mask_args))
# the loader workers draw the masks (masked_collate); the data preprocessor checks the law
train_dataloader = dict(collate_fn=dict(type='masked_collate', **mask_args))

optim_wrapper = dict(
    optimizer=dict(lr=1e-3),
    # one global norm (the official code clips backbone and head apart: type='per_module')
    clip_grad=dict(_delete_=True, max_norm=3.0),
    constructor='LayerDecayOptimWrapperConstructor',
    paramwise_cfg=dict(layer_decay_rate=0.9,
                       custom_keys={'backbone.patch_embed': dict(lr_mult=0.2)}))
custom_hooks = [
    dict(type='RandomStateHook'),
    dict(type='KNNHook', train_dataloader={{_base_.knn_train_dataloader}},
         val_dataloader={{_base_.knn_val_dataloader}}, interval=1, k=20, temperature=0.07,
         before_train=True),
]
