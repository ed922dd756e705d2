"""DINOHead (docs/methods.md#dino-head) against a float64 numpy forward written from the docs:
Linear-GELU-Linear-GELU-Linear, L2 normalisation, weight-normalised prototypes
w_k = g_k v_k / ||v_k|| (no bias), scores <w_k, y>."""
import numpy as np
import pytest
import torch
from scipy.special import erf

from mmselfsup_vmf.models.heads import DINOHead


def np_gelu(x):
    return 0.5 * x * (1 + erf(x / np.sqrt(2.0)))


def np_head(head, x):
    """Float64 forward from the head's parameters (read by the names in the docs)."""
    linears = [m for m in head.mlp if isinstance(m, torch.nn.Linear)]
    h = x.double().numpy()
    for i, lin in enumerate(linears):
        h = h @ lin.weight.detach().double().numpy().T + lin.bias.detach().double().numpy()
        if i < len(linears) - 1:
            h = np_gelu(h)
    y = h / np.maximum(np.linalg.norm(h, axis=-1, keepdims=True), 1e-12)
    if head.last_layer is None:
        return y, None
    pw = head.last_layer.parametrizations.weight
    g = pw.original0.detach().double().numpy()  # (K, 1)
    v = pw.original1.detach().double().numpy()  # (K, p)
    w = g * v / np.linalg.norm(v, axis=1, keepdims=True)
    return y, y @ w.T


def test_structure_and_init():
    torch.manual_seed(0)
    head = DINOHead(in_channels=384, num_prototypes=1000)
    linears = [m for m in head.mlp if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == \
        [(384, 2048), (2048, 2048), (2048, 256)]
    assert [type(m).__name__ for m in head.mlp] == \
        ['Linear', 'GELU', 'Linear', 'GELU', 'Linear']  # no BatchNorm, GELU between
    for m in linears:
        assert m.weight.std().item() == pytest.approx(0.02, rel=0.05)
        assert torch.all(m.bias == 0)
    pw = head.last_layer.parametrizations.weight
    assert head.last_layer.bias is None
    assert tuple(pw.original0.shape) == (1000, 1) and torch.all(pw.original0 == 1)
    assert tuple(pw.original1.shape) == (1000, 256)
    # frozen g: every prototype has norm 1; v is trainable
    assert not pw.original0.requires_grad and pw.original1.requires_grad
    torch.testing.assert_close(head.prototype_norms(), torch.ones(1000))
    names = [n for n, _ in head.named_parameters()]
    assert 'last_layer.parametrizations.weight.original0' in names  # matched by 'last_layer'


@pytest.mark.parametrize('norm_last_layer', [True, False])
def test_forward_matches_numpy(norm_last_layer):
    torch.manual_seed(1)
    head = DINOHead(in_channels=12, hidden_channels=20, bottleneck_channels=6,
                    num_prototypes=9, norm_last_layer=norm_last_layer)
    pw = head.last_layer.parametrizations.weight
    assert pw.original0.requires_grad is (not norm_last_layer)
    if not norm_last_layer:  # unnormalised prototypes keep their own norm |g_k|
        with torch.no_grad():
            pw.original0.copy_(torch.linspace(0.5, 2.0, 9)[:, None])
    x = torch.randn(5, 12)
    y_ref, s_ref = np_head(head, x)
    np.testing.assert_allclose(head.embed(x).detach().numpy(), y_ref, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(head(x).detach().numpy(), s_ref, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(y_ref, axis=-1), 1.0)
    g = pw.original0.detach().numpy()[:, 0]
    np.testing.assert_allclose(head.prototype_norms().detach().numpy(), np.abs(g), rtol=1e-6)
    # gradients reach g only when it is trainable
    head(x).sum().backward()
    assert (pw.original0.grad is not None) is (not norm_last_layer)


def test_without_prototypes_and_with_patch_layer():
    torch.manual_seed(2)
    head = DINOHead(in_channels=8, hidden_channels=16, bottleneck_channels=4,
                    num_prototypes=None)
    x = torch.randn(3, 8)
    y_ref, _ = np_head(head, x)
    np.testing.assert_allclose(head(x).detach().numpy(), y_ref, rtol=1e-5, atol=1e-6)
    assert head.prototype_norms() is None

    head2 = DINOHead(in_channels=8, hidden_channels=16, bottleneck_channels=4,
                     num_prototypes=5, num_patch_prototypes=7)
    assert head2(x).shape == (3, 5) and head2(x, patch=True).shape == (3, 7)
    assert head2.prototype_norms(patch=True).shape == (7,)
    assert any(n.startswith('last_layer2.') for n, _ in head2.named_parameters())


def test_num_layers_one_and_bn_option():
    head = DINOHead(in_channels=8, hidden_channels=16, bottleneck_channels=4, num_layers=1,
                    num_prototypes=3)
    assert [type(m).__name__ for m in head.mlp] == ['Linear']
    head_bn = DINOHead(in_channels=8, hidden_channels=16, bottleneck_channels=4,
                       num_prototypes=3, use_bn=True)
    assert [type(m).__name__ for m in head_bn.mlp] == \
        ['Linear', 'BatchNorm1d', 'GELU', 'Linear', 'BatchNorm1d', 'GELU', 'Linear']
    with pytest.raises(ValueError, match='num_layers'):
        DINOHead(in_channels=8, num_layers=0)


@pytest.mark.parametrize('dtype', [torch.bfloat16, torch.float16])
def test_prototype_scores_under_autocast_are_float32_from_the_hidden_layer(dtype):
    """DINO ViT-S/16's head (K = 65,536, p = 256) under CPU autocast: the last linear layer,
    the normalisation and the prototype product run in float32, so the scores differ from a
    float64 recomputation from the same (low-precision) hidden activations by float32
    rounding only; the error left against the float32 head at tau = 0.04 is the hidden
    layers' (bf16: < 0.06, fp16: < 0.008 in logits / tau; a bf16 product alone added ~0.02)."""
    torch.manual_seed(0)
    head = DINOHead(in_channels=384, hidden_channels=2048, bottleneck_channels=256,
                    num_prototypes=65536, norm_last_layer=False)
    x, tau = torch.randn(32, 384), 0.04
    with torch.no_grad():
        full = head(x) / tau
        with torch.autocast('cpu', dtype=dtype):
            hidden = head.mlp[:-1](x)
            scores = head(x)
        assert hidden.dtype == dtype and scores.dtype == torch.float32
        tail, proto = head.mlp[-1], head.last_layer
        z = hidden.double() @ tail.weight.double().T + tail.bias.double()
        y = z / z.norm(dim=-1, keepdim=True)
        reference = y @ proto.weight.double().T / tau  # w_k = g_k v_k / ||v_k||
        assert (scores.double() / tau - reference).abs().max() < 2e-4
        bound = 0.06 if dtype == torch.bfloat16 else 0.008
        assert (scores / tau - full).abs().max() < bound
        # what the fix removes: the same bottleneck, product in the low precision
        with torch.autocast('cpu', dtype=dtype):
            low = proto(head.embed(x)).float() / tau
        assert (low - full).abs().max() > (scores / tau - full).abs().max()
