# ImageNet-1k with DINO's multi-crop (2 global 224 px + 10 local 96 px crops) made on the
# device: the loader decodes and fits each image into 384 x 384 (one resize, padded), the
# data preprocessor crops and augments in batches with kornia
# (docs/methods.md#multi-crop-on-the-device). Use it in place of imagenet_multicrop.py.
_base_ = ['./imagenet_multicrop.py']
crop_laws = dict(num_global=2, num_local=10, global_size=224, local_size=96,
                 global_scale=(0.25, 1.0), local_scale=(0.05, 0.25))
data_preprocessor = dict(type='MultiCropDataPreprocessor', **crop_laws)
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='DeviceMultiCropInput', size=384, **crop_laws),  # draws the views' parameters
    dict(type='PackInputs', meta_keys=('img_shape', 'aug_seed', 'crop_params')),
]
# stacks the views' parameters into one tensor per batch (pinned, copied once)
train_dataloader = dict(collate_fn=dict(type='multicrop_collate'),
                        dataset=dict(dataset=dict(pipeline=train_pipeline)))
