"""Weighted k-NN (DINO protocol) against a float64 numpy reference and hand-computed votes."""
import socket
import warnings

import numpy as np
import pytest
import torch
from testing_utils import start_ranks

from mmselfsup_vmf.evaluation import extract_features, knn_accuracy, weighted_knn_classify


def reference_scores(train, train_y, test, num_classes, k, temperature):
    """float64 numpy: L2-normalise, cosine, top-k, weight exp(s/T), vote, normalise."""
    train = np.asarray(train, np.float64)
    test = np.asarray(test, np.float64)
    train = train / np.linalg.norm(train, axis=1, keepdims=True)
    test = test / np.linalg.norm(test, axis=1, keepdims=True)
    k = min(k, len(train))
    votes = np.zeros((len(test), num_classes))
    for i, row in enumerate(test @ train.T):
        for j in np.argsort(-row, kind='stable')[:k]:
            votes[i, train_y[j]] += np.exp(row[j] / temperature)
    return votes / votes.sum(axis=1, keepdims=True)


def reference_accuracy(scores, test_y):
    top5 = min(5, scores.shape[1])
    hit1 = hit5 = 0
    for row, y in zip(scores, test_y):
        order = sorted(range(len(row)), key=lambda c: (-row[c], c))
        hit1 += order[0] == y
        hit5 += y in order[:top5] and row[y] > 0
    return 100.0 * hit1 / len(test_y), 100.0 * hit5 / len(test_y)


def random_problem(seed, num_train=50, num_test=13, dim=8, num_classes=6):
    rng = np.random.default_rng(seed)
    train = rng.normal(size=(num_train, dim))
    test = rng.normal(size=(num_test, dim))
    train_y = rng.integers(0, num_classes, num_train)
    test_y = rng.integers(0, num_classes, num_test)
    return train, train_y, test, test_y, num_classes


@pytest.mark.parametrize('k', [1, 5, 20])
@pytest.mark.parametrize('temperature', [0.07, 0.5])
@pytest.mark.parametrize('chunk_size', [1, 7, 1000, None])
def test_matches_numpy_reference(k, temperature, chunk_size):
    train, train_y, test, test_y, c = random_problem(seed=k * 100 + int(temperature * 100))
    expected = reference_scores(train, train_y, test, c, k, temperature)
    args = (torch.tensor(train, dtype=torch.float32), torch.tensor(train_y),
            torch.tensor(test, dtype=torch.float32), c)
    scores = weighted_knn_classify(*args, k=k, temperature=temperature, chunk_size=chunk_size,
                                   return_scores=True)
    assert scores.shape == (13, c) and scores.dtype == torch.float32
    np.testing.assert_allclose(scores.numpy(), expected, rtol=2e-4, atol=1e-6)
    labels = weighted_knn_classify(*args, k=k, temperature=temperature, chunk_size=chunk_size)
    np.testing.assert_array_equal(labels.numpy(), expected.argmax(axis=1))
    acc = knn_accuracy(*args[:3], torch.tensor(test_y), c, k=k, temperature=temperature,
                       chunk_size=chunk_size)
    top1, top5 = reference_accuracy(expected, test_y)
    assert acc['top1'] == pytest.approx(top1) and acc['top5'] == pytest.approx(top5)


def test_several_k_in_one_pass_match_single_k():
    train, train_y, test, test_y, c = random_problem(seed=3, num_train=300, num_test=40)
    args = (torch.tensor(train).float(), torch.tensor(train_y), torch.tensor(test).float(),
            torch.tensor(test_y), c)
    multi = knn_accuracy(*args, k=(10, 20, 100, 200), chunk_size=16)
    assert sorted(multi) == sorted(f'k{k}/{m}' for k in (10, 20, 100, 200)
                                   for m in ('top1', 'top5'))
    for k in (10, 20, 100, 200):
        top1, top5 = reference_accuracy(reference_scores(train, train_y, test, c, k, 0.07),
                                        test_y)
        assert multi[f'k{k}/top1'] == pytest.approx(top1)
        assert multi[f'k{k}/top5'] == pytest.approx(top5)


def test_hand_computed_three_points():
    # Train (unnormalised on purpose): a=(2,0) y=0, b=(3,4) y=1, c=(0,0.5) y=1; test x=(24,7).
    # After L2-normalisation x=(0.96,0.28), a=(1,0), b=(0.6,0.8), c=(0,1), so the cosine
    # similarities are s_a=0.96, s_b=0.576+0.224=0.80, s_c=0.28.
    # T=1, k=3: vote(0)=e^0.96=2.611696, vote(1)=e^0.80+e^0.28=2.225541+1.323130=3.548671
    #   -> class 1 wins, fractions (0.423951, 0.576049).
    # T=1, k=2: vote(0)=2.611696 > vote(1)=e^0.80=2.225541 -> class 0.
    # T=0.07, k=3: vote(0)=e^(0.96/0.07)=9.037e5 > vote(1)=e^(0.8/0.07)+e^4=9.197e4 -> 0.
    train = torch.tensor([[2.0, 0.0], [3.0, 4.0], [0.0, 0.5]])
    labels = torch.tensor([0, 1, 1])
    test = torch.tensor([[24.0, 7.0]])
    scores = weighted_knn_classify(train, labels, test, 2, k=3, temperature=1.0,
                                   return_scores=True)
    np.testing.assert_allclose(scores.numpy(), [[0.423951, 0.576049]], atol=2e-6)
    assert weighted_knn_classify(train, labels, test, 2, k=3, temperature=1.0).tolist() == [1]
    assert weighted_knn_classify(train, labels, test, 2, k=2, temperature=1.0).tolist() == [0]
    assert weighted_knn_classify(train, labels, test, 2, k=3, temperature=0.07).tolist() == [0]


def test_class_tie_goes_to_lowest_index():
    # Both neighbours have cosine 1/sqrt(2) to the test point: equal votes for classes 3, 1.
    train = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    scores = weighted_knn_classify(train, torch.tensor([3, 1]), torch.tensor([[1.0, 1.0]]), 5,
                                   k=2, return_scores=True)
    assert scores[0, 1] == scores[0, 3] == 0.5
    assert weighted_knn_classify(train, torch.tensor([3, 1]), torch.tensor([[1.0, 1.0]]), 5,
                                 k=2).tolist() == [1]


def test_zero_vote_class_is_never_a_top5_hit():
    # k=1: only class 7 gets a vote; true class 0 would be among the lowest-index zero-vote
    # classes that fill the top 5, but it received no vote, so it is a miss.
    train = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    acc = knn_accuracy(train, torch.tensor([7, 8]), torch.tensor([[1.0, 0.1], [0.1, 1.0]]),
                       torch.tensor([0, 8]), 10, k=1)
    assert acc == {'top1': 50.0, 'top5': 50.0}


def test_k_larger_than_train_set_is_clamped_with_warning():
    train, train_y, test, test_y, c = random_problem(seed=5, num_train=6, num_test=3)
    with pytest.warns(UserWarning, match='exceeds the 6 train samples'):
        scores = weighted_knn_classify(torch.tensor(train).float(), torch.tensor(train_y),
                                       torch.tensor(test).float(), c, k=20, return_scores=True)
    np.testing.assert_allclose(scores.numpy(), reference_scores(train, train_y, test, c, 6, 0.07),
                               rtol=2e-4, atol=1e-6)


def test_small_temperature_does_not_overflow_float32():
    # exp(1 / 0.005) = e^200 overflows float32; the shifted weights must not.
    train, train_y, test, _, c = random_problem(seed=6)
    scores = weighted_knn_classify(torch.tensor(train).float(), torch.tensor(train_y),
                                   torch.tensor(test).float(), c, k=5, temperature=0.005,
                                   return_scores=True)
    assert torch.isfinite(scores).all()
    np.testing.assert_allclose(scores.numpy(),
                               reference_scores(train, train_y, test, c, 5, 0.005), atol=1e-4)


def test_empty_test_set_returns_empty_predictions():
    out = weighted_knn_classify(torch.ones(4, 3), torch.tensor([0, 1, 0, 1]),
                                torch.zeros(0, 3), 2, k=2)
    assert out.shape == (0, ) and out.dtype == torch.long


@pytest.mark.parametrize('kwargs, match', [
    (dict(test_feats=torch.ones(2, 4)), 'feature dims differ'),
    (dict(train_labels=torch.tensor([0, 1])), 'train_labels must be a 1-D tensor of length 3'),
    (dict(train_labels=torch.tensor([0, 1, 5])), r'train_labels must lie in \[0, 3\)'),
    (dict(k=0), 'k must be a positive int'),
    (dict(temperature=0.0), 'temperature must be > 0'),
    (dict(chunk_size=0), 'chunk_size must be >= 1'),
    (dict(train_feats=torch.ones(3)), 'train_feats must be a 2-D'),
])
def test_bad_input_gives_clear_error(kwargs, match):
    args = dict(train_feats=torch.ones(3, 5), train_labels=torch.tensor([0, 1, 2]),
                test_feats=torch.ones(2, 5), num_classes=3, k=2)
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        weighted_knn_classify(**args)


def test_float_labels_rejected():
    with pytest.raises(TypeError, match='integer class indices'):
        weighted_knn_classify(torch.ones(2, 3), torch.tensor([0.0, 1.0]), torch.ones(1, 3), 2)


@pytest.mark.skipif(not torch.cuda.is_available(), reason='no CUDA device on this machine')
def test_cuda_matches_cpu():
    train, train_y, test, _, c = random_problem(seed=7)
    args = (torch.tensor(train).float(), torch.tensor(train_y), torch.tensor(test).float(), c)
    cpu = weighted_knn_classify(*args, k=5, return_scores=True)
    gpu = weighted_knn_classify(args[0].cuda(), args[1].cuda(), args[2], c, k=5,
                                return_scores=True)
    torch.testing.assert_close(gpu.cpu(), cpu, rtol=1e-4, atol=1e-6)


# ---- raw pixels on real data, and feature extraction through mmengine dataloaders -----------
def _digits_loader(split, pipeline=None, batch_size=64, sampler=None):
    from mmengine.runner import Runner
    return Runner.build_dataloader(
        dict(batch_size=batch_size, num_workers=0,
             sampler=sampler or dict(type='DefaultSampler', shuffle=False),
             dataset=dict(type='mmpretrain.SklearnDigits', split=split, image_size=8,
                          pipeline=pipeline or [dict(type='PackInputs')])))


def _flatten_inputs(batch):
    return torch.stack(batch['inputs']).float().flatten(1)


def test_raw_pixel_knn_on_digits_matches_anchor_magnitude(capsys):
    train_f, train_y = extract_features(_flatten_inputs, _digits_loader('train'), progress=True)
    test_f, test_y = extract_features(_flatten_inputs, _digits_loader('test'))
    assert '21/21' in capsys.readouterr().out  # the progress bar ran to the last batch
    ref_train = _digits_loader('train').dataset
    expected = np.stack([ref_train.get_data_info(i)['img'].transpose(2, 0, 1).reshape(-1)
                         for i in range(len(ref_train))])
    np.testing.assert_array_equal(train_f.numpy(), expected)
    np.testing.assert_array_equal(train_y.numpy(), ref_train.get_gt_labels())
    acc = knn_accuracy(train_f, train_y, test_f, test_y, 10, k=20)
    top1, _ = reference_accuracy(
        reference_scores(train_f.numpy(), train_y.numpy(), test_f.numpy(), 10, 20, 0.07),
        test_y.numpy())
    assert acc['top1'] == pytest.approx(top1)
    assert acc['top1'] > 90.0  # docs/install.md#offline-datasets: raw-pixel digits 20-NN is 98.0%


def test_extract_features_rejects_unlabelled_samples_and_bad_shapes():
    from mmpretrain.structures import DataSample
    batch = {'inputs': [torch.zeros(3, 2, 2)], 'data_samples': [DataSample()]}
    with pytest.raises(ValueError, match='no gt_label'):
        extract_features(_flatten_inputs, [batch])
    labelled = {'inputs': [torch.zeros(3, 2, 2)],
                'data_samples': [DataSample().set_gt_label(1)]}
    with pytest.raises(ValueError, match=r'must return a \(1, D\) tensor'):
        extract_features(lambda b: torch.zeros(2, 4), [labelled])
    with pytest.raises(ValueError, match='yielded no batch'):
        extract_features(_flatten_inputs, [])


def _free_port():
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def _dist_worker(rank, world_size, port, out_dir):
    from datetime import timedelta

    import torch.distributed as dist

    dist.init_process_group('gloo', init_method=f'tcp://127.0.0.1:{port}', rank=rank,
                            world_size=world_size, timeout=timedelta(seconds=120))
    try:
        # 497 test images over 2 ranks: DefaultSampler pads rank 1 with a duplicate.
        with warnings.catch_warnings():
            warnings.simplefilter('ignore')
            by_idx = extract_features(_flatten_inputs, _digits_loader('test', batch_size=50))
            # Without sample_idx in the metainfo, the rank-interleaved fallback is used.
            no_idx = extract_features(
                _flatten_inputs,
                _digits_loader('test', [dict(type='PackInputs', meta_keys=())], batch_size=50))
        np.savez(f'{out_dir}/rank{rank}.npz', *[t.numpy() for t in by_idx + no_idx])
    finally:
        dist.destroy_process_group()


def _forked_rank1(_, *args):
    torch.set_num_threads(1)
    _dist_worker(1, *args)


def test_extract_features_gathers_across_two_ranks_in_dataset_order(tmp_path):
    # Rank 0 runs in this process, rank 1 in a forked one.
    args = (2, _free_port(), str(tmp_path))
    ctx = start_ranks(_forked_rank1, args=args, nprocs=1, join=False)
    try:
        _dist_worker(0, *args)
    finally:
        ctx.join()
    single_f, single_y = extract_features(_flatten_inputs, _digits_loader('test'))
    assert single_f.shape == (497, 3 * 8 * 8)
    for rank in (0, 1):
        saved = np.load(tmp_path / f'rank{rank}.npz')
        feats, labels, feats_fallback, labels_fallback = (saved[f'arr_{i}'] for i in range(4))
        np.testing.assert_array_equal(feats, single_f.numpy())
        np.testing.assert_array_equal(labels, single_y.numpy())
        np.testing.assert_array_equal(feats_fallback, single_f.numpy())
        np.testing.assert_array_equal(labels_fallback, single_y.numpy())
