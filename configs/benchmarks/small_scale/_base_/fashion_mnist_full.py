# The small-scale study's data: the demo data (../../../_base_/datasets/fashion_mnist_demo.py)
# on all 60,000 Fashion-MNIST training images, k-NN on the full split (60,000-image bank,
# 10,000 test queries). The images are grey, so hue/saturation jitter and random greyscale do
# nothing: the photometric part is brightness/contrast jitter, blur and solarisation; 4 local
# crops of 14 px (2x2 patches of 7 px, cheap next to the two 28 px global crops).
_base_ = ['../../../_base_/datasets/fashion_mnist_demo.py']
train_pipeline = [
    dict(type='MultiCrop', num_global=2, num_local=4, global_size=28, local_size=14,
         global_scale=(0.4, 1.0), local_scale=(0.1, 0.4), global_blur_probs=(0.5, 0.1),
         local_blur_prob=0.2, solarize_prob=0.2, color_jitter=(0.4, 0.4, 0.0, 0.0),
         grayscale_prob=0.0, interpolation='bilinear'),
    dict(type='PackInputs'),
]
train_dataloader = dict(dataset=dict(dataset=dict(num_samples=None, pipeline=train_pipeline)))
knn_train_dataloader = dict(batch_size=500, dataset=dict(num_samples=None))
knn_val_dataloader = dict(batch_size=500, dataset=dict(num_samples=None))
