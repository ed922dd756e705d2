# The embedded segmentation data (mmseg): 56x56 mosaics of 2x2 Fashion-MNIST garments,
# 11 classes (background + 10 garments), generated in memory from Debian's
# dataset-fashion-mnist (mmselfsup_vmf/datasets/fashion_mnist_mosaic.py). Train mosaics use
# the train images, val mosaics the test images. Models see 28x28 crops (the demo
# backbone's pre-training size): random crops in training, a sliding window in testing.
dataset_type = 'FashionMNISTMosaic'
data_root = '/usr/share/datasets/fashion-mnist'
crop_size = (28, 28)
train_pipeline = [
    dict(type='RandomCrop', crop_size=crop_size),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PackSegInputs'),
]
test_pipeline = [dict(type='PackSegInputs')]
train_dataloader = dict(
    batch_size=16,
    num_workers=0,
    sampler=dict(type='InfiniteSampler', shuffle=True),
    dataset=dict(type=dataset_type, data_root=data_root, split='train', num_mosaics=2000,
                 seed=0, pipeline=train_pipeline))
val_dataloader = dict(
    batch_size=50,
    num_workers=0,
    sampler=dict(type='DefaultSampler', shuffle=False),
    dataset=dict(type=dataset_type, data_root=data_root, split='test', num_mosaics=500,
                 seed=1, pipeline=test_pipeline))
test_dataloader = val_dataloader
val_evaluator = dict(type='IoUMetric', iou_metrics=['mIoU'])
test_evaluator = val_evaluator
