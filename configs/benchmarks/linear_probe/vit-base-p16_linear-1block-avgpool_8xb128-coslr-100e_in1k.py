# Linear probe on ImageNet-1k, DINO's eval_linear.py recipe for ViT-B/16: as the ViT-S/16
# config, but the feature is the last block only, its normalised CLS token concatenated with
# the mean of its normalised patch tokens (DINO: n_last_blocks=1, avgpool_patchtokens=True;
# 2 x 768 = 1536-d).
_base_ = './vit-small-p16_linear-4blocks_8xb128-coslr-100e_in1k.py'

embed_dims = 768
n_last_blocks = 1
avgpool_patch_tokens = True
model = dict(
    backbone=dict(arch='base', n_last_blocks=n_last_blocks,
                  avgpool_patch_tokens=avgpool_patch_tokens),
    head=dict(in_channels=embed_dims * (n_last_blocks + int(avgpool_patch_tokens))))
