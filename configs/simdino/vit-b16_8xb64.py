# SimDINO ViT-B/16, the published recipe (docs/simdino.md#simdino-vit-b16-recipe; README command
# `main_dino.py --arch vit_base --patch_size 16 --local_crops_number 10 --eps 0.05 --coeff 1`
# on 8 GPUs): 100 epochs, 8 x 64 = 512 images, peak lr 1e-3, drop-path 0.1.
# Published: 74.9 k-NN / 77.3 linear on ImageNet-1k.
#   tools/dist_train.sh configs/simdino/vit-b16_8xb64.py 8
# The objective depends on how the global batch is split (per-rank covariance, alpha and
# gamma from the global n): keep 64 images per GPU on 8 GPUs to reproduce, or set
# model.loss.reduce_cov=True for a split-independent objective.
_base_ = './vit-s16_8xb64.py'
model = dict(
    backbone=dict(arch='base', drop_path_rate=0.1),
    head=dict(in_channels=768))
