"""mmselfsup_vmf/evaluation/logistic_probe.py against a float64 re-derivation of its objective."""
import numpy as np
import pytest
from scipy.optimize import minimize

from mmselfsup_vmf.evaluation.logistic_probe import logistic_probe_accuracy


def reference_fit(x, y, num_classes, C):
    """argmin_{W,b} sum_i -log softmax(W z_i + b)[y_i] + ||W||^2 / (2C), z standardised."""
    mean, std = x.mean(0), x.std(0)
    z = (x - mean) / std
    n, d = z.shape
    onehot = np.eye(num_classes)[y]

    def objective(theta):
        w = theta[:d * num_classes].reshape(d, num_classes)
        b = theta[d * num_classes:]
        logits = z @ w + b
        logits -= logits.max(1, keepdims=True)
        logp = logits - np.log(np.exp(logits).sum(1, keepdims=True))
        p = np.exp(logp)
        loss = -(onehot * logp).sum() + (w ** 2).sum() / (2 * C)
        grad_logits = p - onehot
        grad_w = z.T @ grad_logits + w / C
        return loss, np.concatenate([grad_w.ravel(), grad_logits.sum(0)])

    theta0 = np.zeros(d * num_classes + num_classes)
    res = minimize(objective, theta0, jac=True, method='L-BFGS-B',
                   options=dict(maxiter=5000, gtol=1e-10))
    w = res.x[:d * num_classes].reshape(d, num_classes)
    b = res.x[d * num_classes:]
    return lambda q: ((q - mean) / std @ w + b).argmax(1)


def test_matches_a_float64_reimplementation_of_the_objective():
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(3, 5)) * 1.5
    y_train, y_test = rng.integers(0, 3, 300), rng.integers(0, 3, 200)
    scale = np.array([1.0, 10.0, 0.1, 3.0, 1.0])  # standardisation matters
    x_train = (centres[y_train] + rng.normal(size=(300, 5))) * scale
    x_test = (centres[y_test] + rng.normal(size=(200, 5))) * scale
    predict = reference_fit(x_train, y_train, 3, C=0.5)
    expected = 100.0 * (predict(x_test) == y_test).mean()
    expected_train = 100.0 * (predict(x_train) == y_train).mean()
    result = logistic_probe_accuracy(x_train, y_train, x_test, y_test, C=0.5)
    assert 40.0 < expected < 100.0  # a non-trivial problem
    assert result['top1'] == pytest.approx(expected)
    assert result['train_top1'] == pytest.approx(expected_train)


def test_separable_classes_and_constant_features():
    x = np.array([[-2.0, 1.0], [-1.0, 1.0], [1.0, 1.0], [2.0, 1.0]])  # feature 2 constant
    y = np.array([0, 0, 1, 1])
    # mirrored test points carry the other label; the constant feature gets a zero weight
    assert logistic_probe_accuracy(x, y, -x, 1 - y)['top1'] == 100.0


@pytest.mark.parametrize('train_shape,test_shape,labels,match', [
    ((4, 3), (2, 2), 4, 'feature dims differ'),
    ((4, ), (2, 4), 4, 'train_feats must be a non-empty 2-D'),
    ((4, 3), (2, 3), 3, 'labels do not match features'),
])
def test_bad_shapes_fail_with_a_clear_message(train_shape, test_shape, labels, match):
    with pytest.raises(ValueError, match=match):
        logistic_probe_accuracy(np.zeros(train_shape), np.zeros(labels, dtype=int),
                                np.zeros(test_shape), np.zeros(test_shape[0], dtype=int))
