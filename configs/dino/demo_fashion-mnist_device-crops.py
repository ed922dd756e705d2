# The DINO demo with multi-crop on the data preprocessor's device (kornia): the loader only
# packs the 28 px image and draws its augmentation seed and every view's random parameters;
# crops, flips, colour jitter, grayscale, blur and solarisation run batched in
# MultiCropDataPreprocessor with the same distributions as the MultiCrop pipeline of
# demo_fashion-mnist.py (docs/methods.md#multi-crop-on-the-device).
_base_ = ['./demo_fashion-mnist.py']
crop_laws = dict(num_global=2, num_local=2, global_size=28, local_size=14,
                 global_scale=(0.4, 1.0), local_scale=(0.1, 0.4), global_blur_probs=(0.5, 0.1),
                 local_blur_prob=0.2)
model = dict(data_preprocessor=dict(
    type='MultiCropDataPreprocessor', interpolation='bilinear', **crop_laws))
train_dataloader = dict(collate_fn=dict(type='multicrop_collate'),  # one parameter tensor
                        dataset=dict(dataset=dict(pipeline=[
                            dict(type='DeviceMultiCropInput', size=28, **crop_laws),
                            dict(type='PackInputs',
                                 meta_keys=('img_shape', 'aug_seed', 'crop_params')),
                        ])))
