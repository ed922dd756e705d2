"""tools/benchmarks/small_scale_features.py: DINO's linear-evaluation features of a teacher,
checked against ``LinearProbeViT`` (an explicit block loop, not forward hooks), and the
re-scoring of a finished smoke study run."""
import json
import os.path as osp
import sys

import pytest
import torch

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
sys.path.insert(0, osp.join(ROOT, 'tools', 'benchmarks'))
import small_scale  # noqa: E402
import small_scale_features  # noqa: E402

FASHION = '/usr/share/datasets/fashion-mnist'
needs_data = pytest.mark.skipif(not osp.isdir(FASHION),
                                reason='Debian dataset-fashion-mnist not installed')


@needs_data
def test_block_features_equal_dinos_linear_probe_features():
    from knn import build_model, knn_dataloader_cfgs
    from mmengine.runner import Runner

    from mmselfsup_vmf.evaluation.linear_probe import LinearProbeViT
    torch.manual_seed(0)
    model, cfg = build_model(osp.join(ROOT, 'configs/benchmarks/small_scale/dino.py'))
    backbone = model.teacher.module['backbone']
    with torch.no_grad():  # a non-trivial final norm, so that each block's LN matters
        backbone.ln1.weight.uniform_(0.5, 1.5)
        backbone.ln1.bias.uniform_(-0.5, 0.5)
    loader_cfg = knn_dataloader_cfgs(cfg)[1]
    loader_cfg.update(batch_size=6, num_workers=0, persistent_workers=False)
    loader_cfg['dataset']['num_samples'] = 6
    batch = next(iter(Runner.build_dataloader(loader_cfg, seed=0)))
    feats = small_scale_features.block_features(model, batch)

    bb = cfg.model.backbone
    c = bb.arch['embed_dims']
    ref_cls4 = LinearProbeViT(n_last_blocks=4, arch=bb.arch, img_size=bb.img_size,
                              patch_size=bb.patch_size)
    ref_avg = LinearProbeViT(n_last_blocks=1, avgpool_patch_tokens=True, arch=bb.arch,
                             img_size=bb.img_size, patch_size=bb.patch_size)
    for ref in (ref_cls4, ref_avg):
        ref.eval()  # mmpretrain's ViT.train() returns None
        assert not ref.load_state_dict(backbone.state_dict(), strict=True).missing_keys
    x = model.data_preprocessor(batch, False)['inputs']
    x = x[0] if isinstance(x, (list, tuple)) else x
    with torch.no_grad():
        expected_cls4, expected_avg = ref_cls4(x)[0], ref_avg(x)[0]
        study_cls = model.knn_features(batch, 'teacher')
    assert feats['cls4'].shape == (6, 4 * c) and feats['cls_avg'].shape == (6, 2 * c)
    torch.testing.assert_close(feats['cls4'], expected_cls4, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(feats['cls_avg'], expected_avg, rtol=1e-5, atol=1e-5)
    # 'cls' is what the study scores: the teacher's k-NN feature
    torch.testing.assert_close(feats['cls'], study_cls, rtol=1e-5, atol=1e-5)
    # the earlier blocks differ from the last one: cls4 is not four copies of cls
    assert not torch.allclose(feats['cls4'][:, :c], feats['cls'], atol=1e-3)


@pytest.mark.slow
@needs_data
def test_a_finished_smoke_run_is_rescored_with_every_feature(tmp_path, capsys):
    out, work = tmp_path / 'out', tmp_path / 'work'
    assert small_scale.main(['--experiment', 'smoke', '--methods', 'simdino', '--out', str(out),
                             '--work-root', str(work), '--in-process']) == 0
    run = json.loads((out / 'smoke' / 'runs' / 'simdino_s0.json').read_text())
    args = ['--runs-dir', str(out / 'smoke' / 'runs'), '--work-root', str(work / 'smoke'),
            '--out', str(tmp_path / 'features'), '--raw', str(out / 'raw_pixels_smoke.json')]
    assert small_scale_features.main(args) == 0
    result = json.loads((tmp_path / 'features' / 'simdino_s0.json').read_text())
    scores = result['features']
    # the reloaded checkpoint's CLS feature gives the study's own final evaluation back
    assert scores['cls']['knn_top1'] == pytest.approx(run['knn_top1'], abs=1e-6)
    assert scores['cls']['linear_top1'] == pytest.approx(run['linear_top1'], abs=0.5)
    dim = run['feature_dim']  # the smoke ViT has 2 blocks: cls4 concatenates both
    assert [scores[f]['feature_dim'] for f in ('cls', 'cls4', 'cls_avg')] == [dim, 2 * dim,
                                                                               2 * dim]
    text = (tmp_path / 'features' / 'features.md').read_text()
    table = text.splitlines()
    assert table[2].startswith('| raw pixels |') and table[3].startswith(
        '| SimDINO (untranslated) | 1 |')
    # SimDINO >= DINO has no DINO run to compare with here
    assert "claims with the cls4 feature" in text
    assert '| SimDINO (untranslated) ≥ DINO | 0 | not paired (Welch) | — | not run |' in text
    # a second call skips the scored run
    capsys.readouterr()
    assert small_scale_features.main(args) == 0
    assert 'wrote' in capsys.readouterr().out
    assert json.loads((tmp_path / 'features' / 'simdino_s0.json').read_text()) == result
