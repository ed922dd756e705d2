# The small-scale study's data: all 60,000 Fashion-MNIST training images (Debian's
# dataset-fashion-mnist, 28 px grey) for pre-training; k-NN on the full split (60,000-image
# bank, 10,000 test queries). Greyscale images: hue/saturation jitter and random greyscale do
# nothing, so the photometric part is brightness/contrast jitter, blur and solarisation.
data_root = '/usr/share/datasets/fashion-mnist'
image_size = 28
local_size = 14
num_local = 4
data_preprocessor = dict(
    type='SelfSupDataPreprocessor', mean=[72.9, 72.9, 72.9], std=[90.0, 90.0, 90.0],
    to_rgb=False)
train_pipeline = [
    dict(type='MultiCrop', num_global=2, num_local=num_local, global_size=image_size,
         local_size=local_size, global_scale=(0.4, 1.0), local_scale=(0.1, 0.4),
         global_blur_probs=(0.5, 0.1), local_blur_prob=0.2, solarize_prob=0.2,
         color_jitter=(0.4, 0.4, 0.0, 0.0), grayscale_prob=0.0, interpolation='bilinear'),
    dict(type='PackInputs'),
]
train_dataloader = dict(
    batch_size=64,
    num_workers=1,  # augmentations on the second core while the model trains on the first
    persistent_workers=True,
    drop_last=True,
    sampler=dict(type='EpochIndexSampler', shuffle=True),
    collate_fn=dict(type='default_collate'),
    dataset=dict(
        type='SeededDataset',
        dataset=dict(type='FashionMNISTSubset', data_root=data_root, split='train',
                     num_samples=None, image_size=image_size, pipeline=train_pipeline)))

knn_pipeline = [dict(type='PackInputs')]
knn_train_dataloader = dict(
    batch_size=500, num_workers=0, sampler=dict(type='DefaultSampler', shuffle=False),
    collate_fn=dict(type='default_collate'),
    dataset=dict(type='FashionMNISTSubset', data_root=data_root, split='train',
                 num_samples=None, image_size=image_size, pipeline=knn_pipeline))
knn_val_dataloader = dict(
    batch_size=500, num_workers=0, sampler=dict(type='DefaultSampler', shuffle=False),
    collate_fn=dict(type='default_collate'),
    dataset=dict(type='FashionMNISTSubset', data_root=data_root, split='test',
                 num_samples=None, image_size=image_size, pipeline=knn_pipeline))
