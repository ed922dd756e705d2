"""A real truncated JPEG in a real mmpretrain CustomDataset folder: by default a one-line error
naming the file; with ``skip_bad_samples`` a deterministic replacement by another real
sample, counted across data-loader workers, logged once, fatal past ``max_bad_fraction``."""
import numpy as np
import pytest
import torch
from integration.tiny_dino_cfg import tiny_dino_cfg
from mmengine.runner import Runner
from mmpretrain.registry import DATASETS
from PIL import Image
from testing_utils import mmengine_messages

from mmselfsup_vmf.datasets.seeded import replacement_index

LOAD = [dict(type='LoadImageFromFile'), dict(type='PackInputs')]


@pytest.fixture
def folder(tmp_path):
    """8 images in 2 class folders: 7 lossless PNGs and one JPEG cut after 40 bytes."""
    rng = np.random.default_rng(0)
    for i in range(8):
        (tmp_path / 'data' / 'ab'[i % 2]).mkdir(parents=True, exist_ok=True)
        image = Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8))
        image.save(tmp_path / 'data' / 'ab'[i % 2] / f'{i}.png')
    bad = tmp_path / 'data' / 'a' / 'bad.jpg'
    image.save(bad, quality=90)
    bad.write_bytes(bad.read_bytes()[:40])
    (tmp_path / 'data' / 'a' / '0.png').unlink()  # 8 files: 7 PNGs + the bad JPEG
    return tmp_path / 'data', str(bad)


def seeded(root, pipeline=LOAD, **kwargs):
    return DATASETS.build(dict(type='SeededDataset', dataset=dict(
        type='CustomDataset', data_root=str(root), pipeline=pipeline), **kwargs))


def bad_index(ds, bad):
    return next(i for i in range(len(ds)) if ds.dataset.get_data_info(i)['img_path'] == bad)


def test_default_is_an_error_naming_the_file(folder):
    root, bad = folder
    ds = seeded(root)
    with pytest.raises(OSError) as excinfo:
        ds[(bad_index(ds, bad), 0, 0)]
    message = str(excinfo.value)
    assert '\n' not in message and bad in message
    assert 'train_dataloader.dataset.skip_bad_samples=True' in message


def test_replacement_is_another_real_sample_and_deterministic(folder):
    root, bad = folder
    ds = seeded(root, skip_bad_samples=True)
    index = bad_index(ds, bad)
    for epoch in (0, 1, 2):
        sample = ds[(index, epoch, 7)]
        again = seeded(root, skip_bad_samples=True)[(index, epoch, 7)]  # a resumed run
        assert torch.equal(sample['inputs'], again['inputs'])
        meta = sample['data_samples'].metainfo
        assert meta['unreadable_sample'] == bad and meta['unreadable_index'] == index
        # the pixels are those of one of the 7 PNGs, decoded here by PIL (BGR in mmcv)
        pixels = sample['inputs'].permute(1, 2, 0).numpy()[..., ::-1]
        pngs = [np.asarray(Image.open(ds.dataset.get_data_info(i)['img_path']))
                for i in range(len(ds)) if i != index]
        assert sum(np.array_equal(pixels, p) for p in pngs) == 1


@pytest.mark.parametrize('size', [2, 8, 1000])
def test_replacement_index_is_never_the_sample_itself(size):
    for index in range(min(size, 50)):
        for attempt in range(3):
            j = replacement_index(0, 1, index, attempt, size)
            assert 0 <= j < size and j != index


def run(tmp_path, root, fraction):
    cfg = tiny_dino_cfg(tmp_path / f'work{fraction}', epochs=2, batch=4)
    cfg.train_dataloader.update(num_workers=1, persistent_workers=False)
    cfg.train_dataloader.dataset = dict(
        type='SeededDataset', skip_bad_samples=True, max_bad_fraction=fraction,
        dataset=dict(type='CustomDataset', data_root=str(root),
                     pipeline=[dict(type='LoadImageFromFile')]
                     + cfg.train_dataloader.dataset.dataset.pipeline))
    runner = Runner.from_cfg(cfg)
    with mmengine_messages() as messages:
        runner.train()
    return runner, messages


@pytest.mark.slow
def test_training_counts_and_logs_once_across_workers(tmp_path, folder):
    root, bad = folder
    runner, messages = run(tmp_path, root, 0.2)  # 1 of 8 = 0.125 <= 0.2
    assert runner.iter == 4
    first = [m for m in messages if m.startswith('replacing unreadable samples')]
    assert first == [f'replacing unreadable samples by others (first: failed to load image: '
                     f'{bad}); the count is logged at the end of each epoch']
    counts = [m for m in messages if 'unreadable samples replaced so far' in m]
    assert counts == [f'1 unreadable samples replaced so far ({bad})']  # epoch 2: no news


@pytest.mark.slow
def test_training_stops_past_the_fraction(tmp_path, folder):
    root, bad = folder
    with pytest.raises(OSError) as excinfo:
        run(tmp_path, root, 0.1)  # 1 of 8 > 0.1
    assert str(excinfo.value) == (
        '1 of 8 samples are unreadable, more than train_dataloader.dataset.max_bad_fraction='
        f'0.1 (first: failed to load image: {bad}); fix or remove those files, or raise '
        'max_bad_fraction')
