"""Training through MultiCropDataPreprocessor (multi-crop on the device): the DINO demo
config with device crops trains (finite losses, the teacher moves), iBOT's masks come from
the loader through ``MaskedMultiCropDataPreprocessor``, and a resumed run is bitwise the
straight one (the crops depend on (seed, epoch, sample index) only)."""
import torch
from mmengine.runner import Runner
from test_resume_exact import EPOCHS, ITERS, assert_bitwise_equal, final_state, run
from tiny_dino_cfg import tiny_method_cfg

LAWS = dict(num_global=2, num_local=2, global_size=32, local_size=16, local_scale=(0.1, 0.4))
# the loader draws every view's parameters (crop_params); the preprocessor stacks them
DEVICE_PIPELINE = [dict(type='DeviceMultiCropInput', size=32, **LAWS),
                   dict(type='PackInputs', meta_keys=('img_shape', 'aug_seed', 'crop_params'))]


def device_crops(cfg):
    """tiny_dino_cfg's MultiCrop (2 x 32 px + 2 x 16 px) moved onto the preprocessor."""
    cfg.model.data_preprocessor = dict(
        type='MultiCropDataPreprocessor', mean=[72.9] * 3, std=[90.0] * 3, to_rgb=False,
        interpolation='bilinear', **LAWS)
    cfg.train_dataloader.dataset.dataset.pipeline = DEVICE_PIPELINE
    cfg.train_dataloader.collate_fn = dict(type='multicrop_collate')  # packed parameters


def train(cfg):
    runner = Runner.from_cfg(cfg)
    teacher0 = {k: v.clone() for k, v in runner.model.teacher.module.state_dict().items()}
    batches = []
    original = runner.model.data_preprocessor.forward

    def record(data, training=False):
        out = original(data, training)
        batches.append(out)
        return out
    runner.model.data_preprocessor.forward = record
    runner.train()
    moved = [k for k, v in runner.model.teacher.module.state_dict().items()
             if not torch.equal(v, teacher0[k])]
    assert len(moved) > 0.5 * len(teacher0)
    return runner, batches


def test_dino_demo_config_with_device_crops_trains(tmp_path):
    cfg = tiny_method_cfg('dino', tmp_path, config='demo_fashion-mnist_device-crops.py')
    cfg.train_cfg.max_epochs = 1
    runner, batches = train(cfg)
    assert runner.iter == 2
    views = batches[0]['inputs']
    assert [tuple(v.shape) for v in views] == [(16, 3, 28, 28)] * 2 + [(16, 3, 14, 14)] * 2
    # the two global views of an image are different crops
    assert not torch.equal(views[0], views[1])
    scalars = runner.message_hub.log_scalars
    assert torch.isfinite(torch.tensor(scalars['train/loss'].current()))


def test_ibot_masks_with_device_crops(tmp_path):
    cfg = tiny_method_cfg('ibot', tmp_path)
    cfg.train_cfg.max_epochs = 1
    cfg.model.data_preprocessor.update(
        type='MaskedMultiCropDataPreprocessor', num_global=2, num_local=2, global_size=28,
        local_size=14, local_scale=(0.1, 0.4), interpolation='bilinear')
    cfg.train_dataloader.dataset.dataset.pipeline = [
        dict(type='DeviceMultiCropInput', size=28, num_global=2, num_local=2, global_size=28,
             local_size=14, local_scale=(0.1, 0.4)), DEVICE_PIPELINE[1]]
    cfg.train_dataloader.collate_fn.global_size = 28  # what use_device_crops sets
    runner, batches = train(cfg)
    samples = batches[0]['data_samples']
    assert samples[0].mask.shape == (2, 4, 4) and samples[0].mask.dtype == torch.bool
    # the masks are the loader's (masked_collate), not drawn by the data preprocessor
    loader_masks = next(iter(runner.train_dataloader))['masks']
    assert torch.equal(torch.stack([s.mask for s in samples]), loader_masks)
    assert torch.isfinite(torch.tensor(runner.message_hub.log_scalars['train/loss'].current()))


def test_resume_with_device_crops_is_bitwise_identical(tmp_path):
    straight, straight_losses = run(tmp_path / 'straight', configure=device_crops)
    resumed, resumed_losses = run(tmp_path / 'resumed', configure=device_crops,
                                  resume_from=str(tmp_path / 'straight' / 'epoch_2.pth'))
    assert sorted(resumed_losses) == list(range(2 * ITERS, EPOCHS * ITERS))
    for it, loss in resumed_losses.items():
        assert torch.equal(loss, straight_losses[it]), f'loss of iteration {it}'
    assert_bitwise_equal(final_state(straight), final_state(resumed))
