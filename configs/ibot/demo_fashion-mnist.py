# iBOT on the CPU demo data: the DINO demo (../dino/demo_fashion-mnist.py, inherited so that its
# tuning carries over) with a maskable ViT returning all tokens, block masks of the student's
# global crops drawn by the data preprocessor, and the masked-patch loss on the shared head.
# The patch loss uses the DINO demo's teacher temperature schedule and prototype count.
_base_ = '../dino/demo_fashion-mnist.py'
mask_args = dict(patch_size={{_base_.model.backbone.patch_size}}, num_global_views=2,
                 mask_mode='ibot', mask_cfg=dict(pred_ratio=(0.0, 0.3), pred_ratio_var=(0.0, 0.2)))
model = dict(
    type='iBOT',
    backbone=dict(type='MaskedViT', out_type='raw', mask_token_std=0.0),
    patch_loss=dict(type='iBOTPatchLoss', num_prototypes={{_base_.num_prototypes}},
                    dim={{_base_.model.loss.dim}}, centering='logit'),
    teacher_patch_temp={{_base_.model.teacher_temp}},
    data_preprocessor=dict(type='MaskedSelfSupDataPreprocessor', **mask_args))
# the loader workers draw the masks (masked_collate); the data preprocessor checks the law
train_dataloader = dict(collate_fn=dict(type='masked_collate', **mask_args))
default_hooks = dict(prototype_monitor=dict(type='PrototypeMonitorHook', interval=1))
