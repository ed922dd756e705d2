"""The README's table of logged loss terms and statistics is what each algorithm returns.

Each method's demo config is built as it is shipped and one training-mode loss is computed on
a random batch run through the config's own data preprocessor (masks included), so the keys
compared are the ones a real run logs.
"""
import re
from pathlib import Path

import pytest
import torch
from mmengine.config import Config
from mmpretrain.registry import MODELS
from mmpretrain.structures import DataSample

ROOT = Path(__file__).resolve().parents[1]
# the README's first column names the algorithm; each method's demo config builds it
DEMOS = {'DINO': 'dino', 'iBOT': 'ibot', 'SimDINO': 'simdino', 'SimDINOv2': 'simdinov2'}


def readme_table():
    rows = {}
    for line in (ROOT / 'README.md').read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip('|').split('|')]
        if len(cells) == 3 and re.fullmatch(r'`\w+`( \(.*\))?', cells[0]):
            name = re.match(r'`(\w+)`', cells[0]).group(1)
            if name in DEMOS:
                rows[name] = tuple(set(re.findall(r'`(\w+)`', c)) for c in cells[1:])
    return rows


def emitted_keys(method):
    cfg = Config.fromfile(str(ROOT / 'configs' / method / 'demo_fashion-mnist.py'))
    torch.manual_seed(0)
    model = MODELS.build(cfg.model)
    model.init_weights()
    model.train()
    views = [torch.randint(0, 256, (4, 3, 28, 28), dtype=torch.uint8) for _ in range(2)]
    views += [torch.randint(0, 256, (4, 3, 14, 14), dtype=torch.uint8) for _ in range(2)]
    data = model.data_preprocessor(
        dict(inputs=views, data_samples=[DataSample() for _ in range(4)]), True)
    return model.loss(data['inputs'], data['data_samples'])


def test_readme_lists_every_algorithm():
    assert set(readme_table()) == set(DEMOS)


@pytest.mark.parametrize('algorithm', sorted(DEMOS))
def test_readme_logged_terms_equal_what_the_algorithm_returns(algorithm):
    losses, stats = readme_table()[algorithm]
    out = emitted_keys(DEMOS[algorithm])
    assert {k for k in out if 'loss' in k} == losses
    assert {k for k in out if 'loss' not in k} == stats
    assert all(not out[k].requires_grad for k in stats)
