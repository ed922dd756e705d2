# SimDINO, small-scale study: the same ViT and data as ./dino.py; no prototypes: the head
# returns the L2-normalised bottleneck, the loss is cosine alignment + the coding-rate term.
_base_ = ['./_base_/fashion_mnist_full.py', './_base_/schedule.py']
embed_dims = 64
model = dict(
    type='SimDINO',
    backbone=dict(type='VisionTransformer', img_size=28, patch_size=7, out_type='cls_token',
                  arch=dict(embed_dims=embed_dims, num_layers=4, num_heads=4,
                            feedforward_channels=2 * embed_dims)),
    head=dict(type='DINOHead', in_channels=embed_dims, hidden_channels=256,
              bottleneck_channels=64, num_prototypes=None),
    # eps is the official code's eps (= eps^2 of the paper); rate of (student + teacher)/2
    loss=dict(type='SimDINOLoss', eps=0.05, coeff=1.0, expa_type='mean', reduce_cov=False),
    teacher_momentum=0.99,
    data_preprocessor={{_base_.data_preprocessor}})

optim_wrapper = dict(optimizer=dict(lr=1e-3))
custom_hooks = [
    dict(type='RandomStateHook'),
    dict(type='KNNHook', train_dataloader={{_base_.knn_train_dataloader}},
         val_dataloader={{_base_.knn_val_dataloader}}, interval=1, k=20, temperature=0.07,
         before_train=True),
]
