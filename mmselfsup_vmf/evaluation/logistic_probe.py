"""A linear probe on frozen, pre-extracted features: multinomial logistic regression.

Protocol (used by ``tools/benchmarks/small_scale.py``; cheaper than mmpretrain's SGD linear
probe and deterministic)::

    z = (f - mean_train) / std_train              (per feature; std 0 -> 1)
    W, b = argmin  sum_i -log softmax(W z_i + b)[y_i] + ||W||^2 / (2 C)
    y_hat = argmax_c (W z + b)_c

solved to convergence by scikit-learn's ``LogisticRegression`` (L-BFGS, multinomial loss,
``C = 1``, ``max_iter = 1000``). The intercept is not penalised.
"""
import warnings
from typing import Dict

import numpy as np


def _as_2d(name: str, feats) -> np.ndarray:
    arr = np.asarray(feats, dtype=np.float64)
    if arr.ndim != 2 or arr.shape[0] == 0:
        raise ValueError(f'{name} must be a non-empty 2-D (N, D) array, got shape {arr.shape}')
    return arr


def logistic_probe_accuracy(train_feats, train_labels, test_feats, test_labels,
                            C: float = 1.0, max_iter: int = 1000) -> Dict[str, float]:
    """Top-1 accuracy (in %) of an L2-regularised multinomial logistic regression.

    Args:
        train_feats, test_feats: (N, D) features (numpy arrays or CPU tensors).
        train_labels, test_labels: (N,) integer class labels.
        C (float): inverse L2 strength (scikit-learn's convention). Defaults to 1.
        max_iter (int): L-BFGS iterations. Defaults to 1000.

    Returns:
        dict: ``{'top1': test accuracy, 'train_top1': train accuracy, 'iterations': n}``.
    """
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression
    x_train, x_test = _as_2d('train_feats', train_feats), _as_2d('test_feats', test_feats)
    if x_train.shape[1] != x_test.shape[1]:
        raise ValueError(f'feature dims differ: train {x_train.shape} vs test {x_test.shape}')
    y_train = np.asarray(train_labels).reshape(-1)
    y_test = np.asarray(test_labels).reshape(-1)
    if len(y_train) != len(x_train) or len(y_test) != len(x_test):
        raise ValueError(f'labels do not match features: {len(y_train)} train labels for '
                         f'{len(x_train)} rows, {len(y_test)} test labels for {len(x_test)}')
    mean = x_train.mean(axis=0)
    std = x_train.std(axis=0)
    std[std == 0] = 1.0
    clf = LogisticRegression(C=C, max_iter=max_iter)
    with warnings.catch_warnings():
        warnings.simplefilter('ignore', ConvergenceWarning)  # reported as 'iterations'
        clf.fit((x_train - mean) / std, y_train)
    return {
        'top1': 100.0 * float(clf.score((x_test - mean) / std, y_test)),
        'train_top1': 100.0 * float(clf.score((x_train - mean) / std, y_train)),
        'iterations': int(np.max(clf.n_iter_)),
    }
