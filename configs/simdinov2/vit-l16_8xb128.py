# SimDINOv2 ViT-L/16, the official simdino_config.yaml (arch vit_large;
# docs/simdino.md#simdinov2-recipe):
# as the ViT-B/16 config with the large backbone. Published: 81.1 k-NN / 82.4 linear on
# ImageNet-1k; about 1 day on 8 GPUs.
_base_ = './vit-b16_8xb128.py'
model = dict(backbone=dict(arch='large'), head=dict(in_channels=1024))
