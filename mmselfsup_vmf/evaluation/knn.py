"""Weighted k-NN classification of frozen features (the DINO protocol).

Protocol (Caron et al. 2021, arXiv:2104.14294; ``knn_classifier`` in ``eval_knn.py`` of
facebookresearch/dino at 7c446df5b9f45747937fb0d72314eb9f7b66930a; the one fixed protocol we
report, see docs/downstream.md#k-nn-accuracy)::

    f <- f / ||f||_2                      (train and test features)
    s_ij = <f_i^test, f_j^train>          (cosine similarity)
    N_k(i) = the k train points with the largest s_ij
    vote_i(c) = sum_{j in N_k(i), y_j = c} exp(s_ij / T)
    y_hat_i = argmax_c vote_i(c)

Choices made here (documented once, tested in tests/evaluation/test_knn.py):

- ``k`` larger than the train set is clamped to the train-set size with a warning.
- Weights are computed as ``exp((s_ij - max_j s_ij) / T)``: a per-row constant factor that
  leaves the ranking unchanged but cannot overflow float32 for small ``T``. Class scores are
  returned normalised to sum to 1 per test row.
- Ties between classes are broken towards the lowest class index (stable sort). Ties between
  neighbours at the k-th place are resolved by ``torch.topk`` (unspecified, as in DINO).
- A class with zero votes never counts as a top-5 hit (DINO would count whatever class
  ``sort`` puts there when fewer than 5 classes got votes).
- Test rows are processed in chunks so the similarity block stays at most
  ``chunk_size x num_train`` floats; by default about 2**24 floats (64 MB).
"""
import sys
import warnings
from typing import Callable, Dict, Iterable, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor

#: Default bound on the number of similarity entries held at once (64 MB of float32).
DEFAULT_MAX_SIMILARITY_ENTRIES = 1 << 24

KType = Union[int, Sequence[int]]


def _check_inputs(train_feats: Tensor, train_labels: Tensor, test_feats: Tensor,
                  num_classes: int, temperature: float) -> None:
    for name, feats in (('train_feats', train_feats), ('test_feats', test_feats)):
        if not isinstance(feats, Tensor) or feats.dim() != 2:
            raise ValueError(f'{name} must be a 2-D (N, D) tensor, got '
                             f'{getattr(feats, "shape", type(feats))}')
    if train_feats.shape[0] == 0:
        raise ValueError('train_feats is empty: k-NN needs at least one train sample')
    if train_feats.shape[1] != test_feats.shape[1]:
        raise ValueError(f'feature dims differ: train_feats {tuple(train_feats.shape)} vs '
                         f'test_feats {tuple(test_feats.shape)}')
    if not isinstance(train_labels, Tensor) or train_labels.shape != train_feats.shape[:1]:
        raise ValueError(f'train_labels must be a 1-D tensor of length {train_feats.shape[0]}, '
                         f'got {getattr(train_labels, "shape", type(train_labels))}')
    if train_labels.dtype.is_floating_point or train_labels.dtype == torch.bool:
        raise TypeError(f'train_labels must be integer class indices, got {train_labels.dtype}')
    if int(num_classes) < 1:
        raise ValueError(f'num_classes must be >= 1, got {num_classes}')
    if train_labels.numel() and (int(train_labels.min()) < 0
                                 or int(train_labels.max()) >= num_classes):
        raise ValueError(f'train_labels must lie in [0, {num_classes}), got range '
                         f'[{int(train_labels.min())}, {int(train_labels.max())}]')
    if not temperature > 0:
        raise ValueError(f'temperature must be > 0, got {temperature}')


def _normalise_ks(k: KType, num_train: int) -> Tuple[int, ...]:
    ks = (k, ) if isinstance(k, int) else tuple(k)
    if not ks or any(not isinstance(v, int) or v < 1 for v in ks):
        raise ValueError(f'k must be a positive int or a non-empty sequence of them, got {k}')
    if max(ks) > num_train:
        warnings.warn(f'k={max(ks)} exceeds the {num_train} train samples; '
                      f'using k={num_train} instead')
        ks = tuple(min(v, num_train) for v in ks)
    return ks


def _auto_chunk_size(num_test: int, num_train: int, chunk_size: Optional[int]) -> int:
    if chunk_size is None:
        chunk_size = DEFAULT_MAX_SIMILARITY_ENTRIES // max(num_train, 1)
    elif int(chunk_size) < 1:
        raise ValueError(f'chunk_size must be >= 1, got {chunk_size}')
    return max(1, min(int(chunk_size), max(num_test, 1)))


def _iter_class_scores(train_feats: Tensor, train_labels: Tensor, test_feats: Tensor,
                       num_classes: int, ks: Tuple[int, ...], temperature: float,
                       chunk_size: Optional[int]) -> Iterable[Tuple[int, Dict[int, Tensor]]]:
    """Yield ``(start_row, {k: (chunk, C) normalised votes})`` chunk by chunk.

    The top-``max(ks)`` neighbours are found once per chunk; smaller ``k`` reuse the
    first ``k`` of them (``topk`` returns them sorted by decreasing similarity).
    """
    device = train_feats.device
    train_n = F.normalize(train_feats.detach().float(), dim=1)
    labels = train_labels.detach().to(device=device, dtype=torch.long)
    k_max = max(ks)
    step = _auto_chunk_size(test_feats.shape[0], train_n.shape[0], chunk_size)
    for start in range(0, test_feats.shape[0], step):
        chunk = test_feats[start:start + step].detach().to(device=device, dtype=torch.float32)
        sims = F.normalize(chunk, dim=1) @ train_n.T
        top_sims, top_idx = sims.topk(k_max, dim=1, largest=True, sorted=True)
        # exp((s - s_max) / T): same ratios as DINO's exp(s / T), no float32 overflow.
        weights = ((top_sims - top_sims[:, :1]) / temperature).exp()
        top_labels = labels[top_idx]
        scores = {}
        for k in ks:
            votes = torch.zeros(chunk.shape[0], num_classes, device=device)
            votes.scatter_add_(1, top_labels[:, :k], weights[:, :k])
            scores[k] = votes / votes.sum(dim=1, keepdim=True)
        yield start, scores


def _rank_classes(scores: Tensor) -> Tensor:
    """Class indices by decreasing score; equal scores keep the lowest class first."""
    return torch.sort(scores, dim=1, descending=True, stable=True).indices


def weighted_knn_classify(train_feats: Tensor,
                          train_labels: Tensor,
                          test_feats: Tensor,
                          num_classes: int,
                          k: int = 20,
                          temperature: float = 0.07,
                          chunk_size: Optional[int] = None,
                          return_scores: bool = False) -> Tensor:
    """Weighted k-NN prediction for every test row (DINO's vote, see the module docstring).

    Args:
        train_feats (Tensor): (N_train, D) features; the computation runs on their device.
        train_labels (Tensor): (N_train,) integer labels in ``[0, num_classes)``.
        test_feats (Tensor): (N_test, D) features.
        num_classes (int): C.
        k (int): number of neighbours (clamped to N_train with a warning).
        temperature (float): T in ``exp(s / T)``.
        chunk_size (int, optional): test rows per similarity block; None bounds the block
            to about 2**24 entries.
        return_scores (bool): return the (N_test, C) normalised votes instead of labels.

    Returns:
        Tensor: (N_test,) int64 predicted labels (ties -> lowest class index), or the
        (N_test, C) float32 vote fractions ``vote_i(c) / sum_c vote_i(c)``.
    """
    if not isinstance(k, int):
        raise TypeError(f'k must be an int here (use knn_accuracy for several k), got {k!r}')
    _check_inputs(train_feats, train_labels, test_feats, num_classes, temperature)
    (k, ) = _normalise_ks(k, train_feats.shape[0])
    out = []
    for _, scores in _iter_class_scores(train_feats, train_labels, test_feats, num_classes,
                                        (k, ), temperature, chunk_size):
        out.append(scores[k] if return_scores else _rank_classes(scores[k])[:, 0])
    if not out:
        shape = (0, num_classes) if return_scores else (0, )
        dtype = torch.float32 if return_scores else torch.long
        return torch.zeros(shape, dtype=dtype, device=train_feats.device)
    return torch.cat(out)


def knn_accuracy(train_feats: Tensor,
                 train_labels: Tensor,
                 test_feats: Tensor,
                 test_labels: Tensor,
                 num_classes: int,
                 k: KType = 20,
                 temperature: float = 0.07,
                 chunk_size: Optional[int] = None) -> Dict[str, float]:
    """Top-1 / top-5 accuracy (in %) of the weighted k-NN classifier.

    Top-5 uses ``min(5, num_classes)`` classes; a true class with zero votes is a miss.

    Returns:
        dict: ``{'top1', 'top5'}`` for an int ``k``; ``{'k{k}/top1', 'k{k}/top5', ...}``
        for a sequence of ``k`` (keys use the requested k, even when it was clamped).
    """
    _check_inputs(train_feats, train_labels, test_feats, num_classes, temperature)
    if not isinstance(test_labels, Tensor) or test_labels.shape != test_feats.shape[:1]:
        raise ValueError(f'test_labels must be a 1-D tensor of length {test_feats.shape[0]}, '
                         f'got {getattr(test_labels, "shape", type(test_labels))}')
    if test_feats.shape[0] == 0:
        raise ValueError('test_feats is empty: accuracy is undefined without test samples')
    requested = (k, ) if isinstance(k, int) else tuple(k)
    ks = _normalise_ks(k, train_feats.shape[0])
    top_n = min(5, num_classes)
    hits1 = dict.fromkeys(ks, 0)
    hits5 = dict.fromkeys(ks, 0)
    device = train_feats.device
    for start, scores in _iter_class_scores(train_feats, train_labels, test_feats, num_classes,
                                            ks, temperature, chunk_size):
        for kk, sc in scores.items():
            truth = test_labels[start:start + sc.shape[0]].to(device=device, dtype=torch.long)
            ranked = _rank_classes(sc)[:, :top_n]
            voted = sc.gather(1, truth[:, None].clamp(0, num_classes - 1))[:, 0] > 0
            hits1[kk] += int((ranked[:, 0] == truth).sum())
            hits5[kk] += int(((ranked == truth[:, None]).any(dim=1) & voted).sum())
    num_test = test_feats.shape[0]
    if isinstance(k, int):
        return {'top1': 100.0 * hits1[ks[0]] / num_test, 'top5': 100.0 * hits5[ks[0]] / num_test}
    result = {}
    for req, kk in zip(requested, ks):
        result[f'k{req}/top1'] = 100.0 * hits1[kk] / num_test
        result[f'k{req}/top5'] = 100.0 * hits5[kk] / num_test
    return result


def _sample_label(sample) -> int:
    gt = getattr(sample, 'gt_label', None)
    if gt is None and isinstance(sample, dict):
        gt = sample.get('gt_label')
    if gt is None:
        raise ValueError('a data sample has no gt_label: k-NN evaluation needs a labelled '
                         'dataset (e.g. CustomDataset(with_label=True))')
    gt = torch.as_tensor(gt).reshape(-1)
    if gt.numel() != 1:
        raise ValueError(f'k-NN needs one gt_label per sample, got {gt.numel()} values')
    return int(gt[0])


def _sample_index(sample) -> Optional[int]:
    meta = getattr(sample, 'metainfo', sample if isinstance(sample, dict) else {})
    idx = meta.get('sample_idx') if isinstance(meta, dict) else None
    return None if idx is None else int(idx)


def _gather_in_dataset_order(feats: Tensor, labels: Tensor, indices: list,
                             dataset_len: Optional[int]) -> Tuple[Tensor, Tensor]:
    """All-gather the per-rank parts and put them back in dataset order.

    With ``sample_idx`` on every sample, rows are ordered by it and the duplicates that a
    padding sampler adds are dropped. Otherwise the parts are interleaved rank by rank,
    which is the order of mmengine's ``DefaultSampler``, then cut to the dataset length.
    """
    from mmengine.dist import all_gather_object
    parts = [p for p in all_gather_object((feats, labels, indices)) if p[0] is not None]
    if not parts:
        raise ValueError('the dataloader yielded no batch on any rank: nothing to extract')
    all_feats = torch.cat([p[0] for p in parts])
    all_labels = torch.cat([p[1] for p in parts])
    if all(None not in p[2] for p in parts):
        all_idx = torch.tensor([i for p in parts for i in p[2]], dtype=torch.long)
        first = _first_occurrence(all_idx)
        return all_feats[first], all_labels[first]
    order = []
    offsets = [0]
    for p in parts:
        offsets.append(offsets[-1] + p[0].shape[0])
    longest = max(p[0].shape[0] for p in parts)
    for row in range(longest):
        for r, p in enumerate(parts):
            if row < p[0].shape[0]:
                order.append(offsets[r] + row)
    if dataset_len is not None:
        order = order[:dataset_len]
    order = torch.tensor(order, dtype=torch.long)
    return all_feats[order], all_labels[order]


def _first_occurrence(idx: Tensor) -> Tensor:
    """Positions of the first occurrence of each distinct value of ``idx``, by value."""
    order = torch.sort(idx, stable=True).indices
    sorted_idx = idx[order]
    keep = torch.ones_like(sorted_idx, dtype=torch.bool)
    keep[1:] = sorted_idx[1:] != sorted_idx[:-1]
    return order[keep]


@torch.no_grad()
def flat_input_pixels(data_batch: dict) -> Tensor:
    """A ``feature_fn`` for :func:`extract_features`: the batch's images as (B, C*H*W)
    float vectors (the raw-pixel baseline)."""
    inputs = data_batch['inputs']
    inputs = torch.stack(list(inputs)) if isinstance(inputs, (list, tuple)) else inputs
    return inputs.flatten(1).float()


def extract_features(feature_fn: Callable[[dict], Tensor],
                     dataloader: Iterable,
                     progress: bool = False) -> Tuple[Tensor, Tensor]:
    """Run ``feature_fn`` over a dataloader and collect features and labels.

    Args:
        feature_fn: ``data_batch -> (B, D) tensor``; ``data_batch`` is what the dataloader
            yields (a dict with ``inputs`` and ``data_samples`` of mmpretrain ``DataSample``).
        dataloader: any iterable of such batches.
        progress (bool): show an mmengine progress bar on the main process.

    Returns:
        tuple: (N, D) float32 features and (N,) int64 labels on the CPU. Under distributed
        training every rank gets the whole set, in dataset order (see
        ``_gather_in_dataset_order``); on one process the dataloader order is kept.
    """
    from mmengine.dist import get_world_size, is_main_process
    from mmengine.utils import ProgressBar
    bar = None
    if progress and is_main_process() and hasattr(dataloader, '__len__'):
        # file= at call time, so the bar follows a redirected sys.stdout.
        bar = ProgressBar(len(dataloader), file=sys.stdout)
    feats, labels, indices = [], [], []
    for data_batch in dataloader:
        samples = data_batch.get('data_samples') if isinstance(data_batch, dict) else None
        if samples is None:
            raise ValueError('each data batch must be a dict with "data_samples" carrying '
                             'gt_label; got ' + type(data_batch).__name__)
        out = feature_fn(data_batch)
        if not isinstance(out, Tensor) or out.dim() != 2 or out.shape[0] != len(samples):
            raise ValueError(f'feature_fn must return a ({len(samples)}, D) tensor, got '
                             f'{getattr(out, "shape", type(out))}')
        feats.append(out.detach().float().cpu())
        labels.extend(_sample_label(s) for s in samples)
        indices.extend(_sample_index(s) for s in samples)
        if bar is not None:
            bar.update()
    if bar is not None:
        bar.file.write('\n')
    feats_t = torch.cat(feats) if feats else None
    labels_t = torch.tensor(labels, dtype=torch.long)
    if get_world_size() == 1:
        if feats_t is None:
            raise ValueError('the dataloader yielded no batch: nothing to extract')
        return feats_t, labels_t
    # Every rank must reach the collective, even one whose shard was empty.
    dataset = getattr(dataloader, 'dataset', None)
    dataset_len = len(dataset) if hasattr(dataset, '__len__') else None
    return _gather_in_dataset_order(feats_t, labels_t, indices, dataset_len)
