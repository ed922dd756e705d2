"""tools/analysis/compare_with_official.py checked on itself: our shrunk DINO and SimDINOv2
loops against a deliberately perturbed copy must fail at the perturbed quantity and iteration,
and against an unperturbed copy must pass. The official repositories are not reachable from
CI; with ``OFFICIAL_DINO=/path/to/facebookresearch/dino`` or
``OFFICIAL_SIMDINOV2=/path/to/SimDINO/simdinov2`` the real comparisons run too.
"""
import os
import sys

import pytest
import torch
from testing_utils import ROOT, load_tool

sys.path.insert(0, os.path.join(ROOT, 'tools', 'analysis'))
from equivalence_official import official_name  # noqa: E402
from equivalence_ours import compare_traces, identity_map, run_ours  # noqa: E402
from equivalence_simdinov2 import v2_name  # noqa: E402

compare = load_tool('tools/analysis/compare_with_official.py', 'compare_with_official')


@pytest.fixture(scope='module')
def base():
    return run_ours('dino', ROOT)


def test_unperturbed_copy_passes_bit_for_bit(base):
    again = run_ours('dino', ROOT)
    per_iteration, failure = compare_traces(base, again, identity_map(base['initial']), 0.0)
    assert failure is None
    assert len(per_iteration) == 13  # 12 iterations + the final weights
    assert base['rows'][0]['lr']['backbone.cls_token'] == 0.0  # the warm-up starts at 0
    assert all(x.dtype == torch.float64 for x in base['inputs'][0])


def test_wrong_centre_momentum_is_caught_at_iteration_0(base):
    wrong = run_ours('dino', ROOT, perturb=dict(center_momentum=0.91))
    _, failure = compare_traces(base, wrong, identity_map(base['initial']), 1e-9)
    it, quantity, gap = failure
    # the loss of iteration 0 uses the zero centre; the centre after it differs
    assert (it, quantity) == (0, 'center') and gap > 1e-3


def test_cli_names_a_wrong_lr_at_its_iteration(capsys):
    code = compare.main(['dino', '--self-test', '--perturb-lr-at', '5'])
    out = capsys.readouterr().out
    assert code == 1
    first = [line for line in out.splitlines() if line.startswith('FIRST DIFFERENCE')]
    assert len(first) == 1 and ': lr:' in first[0] and 'at iteration 5' in first[0], out
    # 1.001 x lr -> relative gap 1e-3 / 1.001
    assert f'{0.001 / 1.001:.3e}' in first[0]


def test_parameter_names_map_to_dinos_vision_transformer():
    """Hand-written pairs from facebookresearch/dino vision_transformer.py (7c446df) and
    bytedance/ibot models/vision_transformer.py (da316d8)."""
    pairs = {
        'backbone.patch_embed.projection.weight': 'backbone.patch_embed.proj.weight',
        'backbone.layers.1.ln1.bias': 'backbone.blocks.1.norm1.bias',
        'backbone.layers.0.ln2.weight': 'backbone.blocks.0.norm2.weight',
        'backbone.layers.11.attn.qkv.weight': 'backbone.blocks.11.attn.qkv.weight',
        'backbone.layers.0.ffn.layers.0.0.bias': 'backbone.blocks.0.mlp.fc1.bias',
        'backbone.layers.0.ffn.layers.1.weight': 'backbone.blocks.0.mlp.fc2.weight',
        'backbone.ln1.weight': 'backbone.norm.weight',
        'backbone.cls_token': 'backbone.cls_token',
        'head.mlp.4.bias': 'head.mlp.4.bias',
        'head.last_layer.parametrizations.weight.original0': 'head.last_layer.weight_g',
        'head.last_layer.parametrizations.weight.original1': 'head.last_layer.weight_v',
        'backbone.mask_token': 'backbone.masked_embed',  # bytedance/ibot (da316d8)
    }
    assert {k: official_name(k) for k in pairs} == pairs


def test_cli_self_test_covers_simdinov2_with_its_masks(capsys):
    """The SimDINOv2 loop (masks, per-module clipping, layer-wise lr) through the same
    machinery: a wrong lr at iteration 7 is named there."""
    code = compare.main(['simdinov2', '--self-test', '--perturb-lr-at', '7'])
    out = capsys.readouterr().out
    assert code == 1
    first = [line for line in out.splitlines() if line.startswith('FIRST DIFFERENCE')]
    assert len(first) == 1 and ': lr:' in first[0] and 'at iteration 7' in first[0], out
    assert 'iter  6: loss 0.0e+00' in out  # bit for bit before the perturbation


def test_parameter_names_map_to_simdinov2s_vision_transformer():
    """Hand-written pairs from RobinWu218/SimDINO simdinov2/models/vision_transformer.py and
    layers/ (8149fc4), one block per FSDP chunk (``blocks.i.i``)."""
    pairs = {
        'backbone.patch_embed.projection.bias': 'backbone.patch_embed.proj.bias',
        'backbone.layers.1.ln1.weight': 'backbone.blocks.1.1.norm1.weight',
        'backbone.layers.0.attn.qkv.bias': 'backbone.blocks.0.0.attn.qkv.bias',
        'backbone.layers.0.attn.gamma1.weight': 'backbone.blocks.0.0.ls1.gamma',
        'backbone.layers.1.ffn.gamma2.weight': 'backbone.blocks.1.1.ls2.gamma',
        'backbone.layers.1.ffn.layers.0.0.weight': 'backbone.blocks.1.1.mlp.fc1.weight',
        'backbone.layers.0.ffn.layers.1.bias': 'backbone.blocks.0.0.mlp.fc2.bias',
        'backbone.ln1.bias': 'backbone.norm.bias',
        'backbone.mask_token': 'backbone.mask_token',
        'backbone.register_tokens': 'backbone.register_tokens',
        'head.mlp.4.weight': 'dino_head.mlp.4.weight',
    }
    assert {k: v2_name(k) for k in pairs} == pairs


@pytest.mark.skipif(not os.environ.get('OFFICIAL_DINO'),
                    reason='set OFFICIAL_DINO to a facebookresearch/dino checkout to run the '
                           'real comparison (CI cannot reach GitHub)')
def test_against_official_dino(capsys):
    assert compare.main(['dino', os.environ['OFFICIAL_DINO']]) == 0


@pytest.mark.skipif(not os.environ.get('OFFICIAL_SIMDINOV2'),
                    reason='set OFFICIAL_SIMDINOV2 to the simdinov2 folder of a '
                           'RobinWu218/SimDINO checkout (with timm, omegaconf, iopath) to run '
                           'the real comparison (CI cannot reach GitHub)')
def test_against_official_simdinov2():
    assert compare.main(['simdinov2', os.environ['OFFICIAL_SIMDINOV2']]) == 0
