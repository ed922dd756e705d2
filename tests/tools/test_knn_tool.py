"""tools/benchmarks/knn.py gives the k-NN function's numbers on a tiny model and data set."""
import importlib.util
import os.path as osp
import subprocess
import sys

import numpy as np
import pytest
import torch
from mmengine.config import Config
from mmengine.registry import init_default_scope
from mmpretrain.registry import MODELS

from mmselfsup_vmf.datasets import SklearnDigits
from mmselfsup_vmf.evaluation.knn import knn_accuracy

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
TOOL = osp.join(ROOT, 'tools', 'benchmarks', 'knn.py')
DEMO = osp.join(ROOT, 'configs', 'dino', 'demo_fashion-mnist.py')
NUM_TRAIN = 1500  # scikit-learn digits: 1500 train, 297 test ...
SUBSET = {'train': 300, 'test': 100}  # ... of which the first 300 / 100 (BaseDataset indices)


def load_tool(name, path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


tool = load_tool('knn_tool', TOOL)


def loader(split):
    return (f"dict(batch_size=128, num_workers=0, collate_fn=dict(type='default_collate'),\n"
            f"     sampler=dict(type='DefaultSampler', shuffle=False),\n"
            f"     dataset=dict(_delete_=True, type='SklearnDigits', split='{split}',\n"
            f"                  num_train={NUM_TRAIN}, image_size=28, indices={SUBSET[split]},\n"
            f"                  pipeline=[dict(type='PackInputs')]))")


@pytest.fixture(scope='module')
def setup(tmp_path_factory):
    """A DINO demo config whose k-NN sets are scikit-learn digits, and a random checkpoint."""
    if not osp.isfile(DEMO):
        pytest.skip(f'needs the DINO demo config {DEMO}')
    tmp = tmp_path_factory.mktemp('knn')
    config = tmp / 'knn_cfg.py'
    config.write_text(f'_base_ = {DEMO!r}\n'
                      f'knn_train_dataloader = {loader("train")}\n'
                      f'knn_val_dataloader = {loader("test")}\n')
    cfg = Config.fromfile(str(config))
    init_default_scope('mmpretrain')
    model = MODELS.build(cfg.model)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * 0.1)
        for p in model.teacher.parameters():  # the teacher differs from the student
            p.add_(torch.randn(p.shape, generator=gen) * 0.1)
    torch.save(dict(meta={}, state_dict=model.state_dict()), tmp / 'ckpt.pth')
    return str(config), str(tmp / 'ckpt.pth'), model, cfg


def reference_accuracy(model, cfg, key, ks):
    """Features computed here: (img - mean) / std through the chosen backbone's CLS output."""
    backbone = model.teacher.module['backbone'] if key == 'teacher' else model.backbone
    backbone.eval()
    mean = torch.tensor(cfg.model.data_preprocessor.mean).view(1, 3, 1, 1)
    std = torch.tensor(cfg.model.data_preprocessor.std).view(1, 3, 1, 1)
    feats, labels = {}, {}
    for split in ('train', 'test'):
        data = SklearnDigits(split=split, num_train=NUM_TRAIN, image_size=28,
                             indices=SUBSET[split])
        assert len(data) == SUBSET[split]
        x = torch.from_numpy(np.stack([d['img'] for d in data.data_list])).permute(0, 3, 1, 2)
        with torch.no_grad():
            feats[split] = backbone((x.float() - mean) / std)[-1]
        labels[split] = torch.tensor([d['gt_label'] for d in data.data_list])
    return knn_accuracy(feats['train'], labels['train'], feats['test'], labels['test'], 10,
                        k=ks, temperature=0.07)


@pytest.mark.parametrize('key', ['teacher', 'student'])
def test_tool_matches_the_function(setup, key):
    config, ckpt, model, cfg = setup
    result = tool.run_knn(config, ckpt, key=key, ks=(10, 20), progress=False)
    expected = reference_accuracy(model, cfg, key, (10, 20))
    assert set(result) == {'k10/top1', 'k10/top5', 'k20/top1', 'k20/top5'}
    for name, value in expected.items():
        assert result[name] == pytest.approx(value, abs=1e-9), name


def test_exported_backbone_gives_the_same_numbers(setup, tmp_path):
    config, ckpt, model, cfg = setup
    extractor = load_tool('extract_backbone',
                          osp.join(ROOT, 'tools', 'model_converters', 'extract_backbone.py'))
    extractor.extract_backbone(ckpt, str(tmp_path / 'backbone.pth'))
    from_export = tool.run_knn(config, str(tmp_path / 'backbone.pth'), ks=(20, ),
                               progress=False)
    assert from_export == tool.run_knn(config, ckpt, ks=(20, ), progress=False)


def test_errors(setup, tmp_path):
    config, ckpt, _, _ = setup
    with pytest.raises(FileNotFoundError, match='checkpoint not found'):
        tool.run_knn(config, str(tmp_path / 'no.pth'), progress=False)
    no_data = tmp_path / 'no_data.py'
    no_data.write_text(f"_base_ = {DEMO!r}\nknn_train_dataloader = None\ncustom_hooks = []\n")
    with pytest.raises(ValueError, match='no k-NN data'):
        tool.run_knn(str(no_data), ckpt, progress=False)


@pytest.mark.slow  # a fresh interpreter importing the OpenMMLab stack: ~30 s on a busy 2-core box
def test_cli(setup, tmp_path):
    config, ckpt, _, _ = setup
    out = tmp_path / 'knn.json'
    run = subprocess.run([sys.executable, TOOL, config, ckpt, '--k', '20', '--out', str(out)],
                         capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]
    assert 'k-NN protocol: teacher CLS features' in run.stdout and 'k=20: top1' in run.stdout
    assert out.is_file()
