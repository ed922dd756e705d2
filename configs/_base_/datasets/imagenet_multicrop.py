# ImageNet-1k with DINO's multi-crop (2 global 224 px + 10 local 96 px crops).
dataset_type = 'ImageNet'
data_root = 'data/imagenet/'
data_preprocessor = dict(
    type='SelfSupDataPreprocessor',
    mean=[123.675, 116.28, 103.53],
    std=[58.395, 57.12, 57.375],
    to_rgb=True,
    non_blocking=True)  # host-to-device copies from the loader's pinned memory, no wait
# device_crops=True (e.g. --cfg-options device_crops=True) moves MultiCrop onto the data
# preprocessor's GPU, the loader fitting each image into device_crops_size px (docs/speed.md)
device_crops = False
device_crops_size = 384
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='MultiCrop', num_global=2, num_local=10, global_size=224, local_size=96,
         global_scale=(0.25, 1.0), local_scale=(0.05, 0.25)),
    dict(type='PackInputs'),
]
train_dataloader = dict(
    batch_size=64,
    num_workers=10,
    persistent_workers=True,
    pin_memory=True,
    drop_last=True,
    # (index, epoch, seed) keys + SeededDataset: augmentations reproducible across resume
    sampler=dict(type='EpochIndexSampler', shuffle=True),
    collate_fn=dict(type='default_collate'),
    dataset=dict(
        type='SeededDataset',
        dataset=dict(type=dataset_type, data_root=data_root, split='train',
                     pipeline=train_pipeline)))
