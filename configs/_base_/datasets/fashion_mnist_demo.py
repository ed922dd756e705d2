# The embedded demo data: Debian's dataset-fashion-mnist (28 px grey, 10 classes), in memory.
# Global crops 28 px, local crops 14 px; a k-NN probe on held-out images runs before and
# after training (KNNHook) so the demo shows what was learned.
data_root = '/usr/share/datasets/fashion-mnist'
image_size = 28
data_preprocessor = dict(
    type='SelfSupDataPreprocessor', mean=[72.9, 72.9, 72.9], std=[90.0, 90.0, 90.0],
    to_rgb=False, non_blocking=True)
# device_crops=True or 'cpu' moves MultiCrop onto the data preprocessor (docs/speed.md)
device_crops = False
device_crops_size = image_size
train_pipeline = [
    dict(type='MultiCrop', num_global=2, num_local=2, global_size=image_size, local_size=14,
         global_scale=(0.4, 1.0), local_scale=(0.1, 0.4), global_blur_probs=(0.5, 0.1),
         local_blur_prob=0.2, interpolation='bilinear'),
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
                     num_samples=6000, image_size=image_size, pipeline=train_pipeline)))

knn_pipeline = [dict(type='PackInputs')]
knn_train_dataloader = dict(
    batch_size=256, num_workers=0, sampler=dict(type='DefaultSampler', shuffle=False),
    collate_fn=dict(type='default_collate'),
    dataset=dict(type='FashionMNISTSubset', data_root=data_root, split='train',
                 num_samples=5000, seed=1, image_size=image_size, pipeline=knn_pipeline))
knn_val_dataloader = dict(
    batch_size=256, num_workers=0, sampler=dict(type='DefaultSampler', shuffle=False),
    collate_fn=dict(type='default_collate'),
    dataset=dict(type='FashionMNISTSubset', data_root=data_root, split='test',
                 num_samples=1000, image_size=image_size, pipeline=knn_pipeline))
