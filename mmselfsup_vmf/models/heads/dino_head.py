"""The DINO projection head, shared by DINO, DINO-vMF, iBOT, iBOT-vMF, SimDINO and SimDINOv2."""
from typing import Optional

import torch
import torch.nn.functional as F
from mmengine.model import BaseModule
from mmpretrain.registry import MODELS
from torch import nn
from torch.nn.utils.parametrizations import weight_norm

from ...arg_checks import check_int


def _prototype_layer(dim: int, num_prototypes: int, norm_last_layer: bool) -> nn.Linear:
    """Weight-normalised linear layer w_k = g_k v_k / ||v_k|| without bias; g starts at 1.

    ``norm_last_layer=True`` freezes g (all ||w_k|| = 1); ``False`` trains it, so each
    prototype keeps its own norm (the vMF precision). g has shape (K, 1): it is 2-D, so
    the optimiser's decay rules treat it as a weight, as DINO does.
    """
    layer = weight_norm(nn.Linear(dim, num_prototypes, bias=False))
    g = layer.parametrizations.weight.original0
    with torch.no_grad():
        g.fill_(1.0)
    g.requires_grad_(not norm_last_layer)
    return layer


def _unit(z: torch.Tensor) -> torch.Tensor:
    return F.normalize(z, dim=-1, p=2, eps=1e-6 if z.dtype == torch.float16 else 1e-12)


@MODELS.register_module()
class DINOHead(BaseModule):
    """3-layer MLP -> L2-normalised bottleneck -> optional prototype layer(s).

    ``Linear(C, 2048) GELU Linear(2048, 2048) GELU Linear(2048, 256)``, no BatchNorm by
    default, trunc-normal(0.02) weights and zero biases. With ``num_prototypes=None`` (SimDINO)
    the head returns the unit-norm bottleneck y; otherwise the scores <w_k, y>.
    ``num_patch_prototypes`` adds iBOT's separate patch layer ``last_layer2`` (``None``: the
    patch tokens share ``last_layer``).
    """

    config_key = 'model.head'  # named in argument errors

    def __init__(self,
                 in_channels: int,
                 hidden_channels: int = 2048,
                 bottleneck_channels: int = 256,
                 num_layers: int = 3,
                 num_prototypes: Optional[int] = 65536,
                 num_patch_prototypes: Optional[int] = None,
                 norm_last_layer: bool = True,
                 use_bn: bool = False,
                 init_cfg=None):
        super().__init__(init_cfg=init_cfg)
        for name, value in (('in_channels', in_channels), ('hidden_channels', hidden_channels),
                            ('bottleneck_channels', bottleneck_channels),
                            ('num_layers', num_layers)):
            check_int(f'{self.config_key}.{name}', value)
        for name, value in (('num_prototypes', num_prototypes),
                            ('num_patch_prototypes', num_patch_prototypes)):
            check_int(f'{self.config_key}.{name}', value, allow_none=True)
        dims = [in_channels] + [hidden_channels] * (num_layers - 1) + [bottleneck_channels]
        layers = []
        for i, (d_in, d_out) in enumerate(zip(dims[:-1], dims[1:])):
            layers.append(nn.Linear(d_in, d_out))
            if i < num_layers - 1:
                if use_bn:
                    layers.append(nn.BatchNorm1d(d_out))
                layers.append(nn.GELU())
        self.mlp = nn.Sequential(*layers)
        for m in self.mlp.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)
        self.bottleneck_channels = bottleneck_channels
        self.last_layer = (None if num_prototypes is None else
                           _prototype_layer(bottleneck_channels, num_prototypes, norm_last_layer))
        self.last_layer2 = (None if num_patch_prototypes is None else _prototype_layer(
            bottleneck_channels, num_patch_prototypes, norm_last_layer))

    def init_weights(self):
        # weights are set in __init__ (DINO's init); skip mmengine's default re-init
        pass

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """The L2-normalised bottleneck y (..., p)."""
        return _unit(self.mlp(x))

    def forward(self, x: torch.Tensor, patch: bool = False) -> torch.Tensor:
        layer = self.last_layer2 if (patch and self.last_layer2 is not None) else self.last_layer
        if layer is None:
            return self.embed(x)
        # the modules themselves (a slice would build a new Sequential per call, and
        # torch.compile would recompile for each); the body runs in the caller's precision
        *body, tail = self.mlp
        hidden = x
        for module in body:
            hidden = module(hidden)
        # the scores are divided by temperatures down to 0.04: from a bf16 bottleneck and
        # product (8-bit mantissa) the logits would be ~0.05 off; the last linear layer, the
        # normalisation and the prototypes (~2 % of the head's FLOPs) run in float32
        with torch.autocast(x.device.type, enabled=False):
            return layer(_unit(tail(hidden.to(tail.weight.dtype))))

    def prototype_norms(self, patch: bool = False) -> Optional[torch.Tensor]:
        """||w_k|| of the prototypes used for CLS (or patch) tokens, shape (K,).

        With the weight norm w_k = g_k v_k / ||v_k||, ||w_k|| = |g_k| exactly; reading it
        from g (gradient sign(g_k)) avoids recomputing the (K, p) weight and its backward at
        every call, which was most of DINO-vMF's overhead over DINO.
        """
        layer = self.last_layer2 if (patch and self.last_layer2 is not None) else self.last_layer
        if layer is None:
            return None
        weight_norm_params = getattr(getattr(layer, 'parametrizations', None), 'weight', None)
        if weight_norm_params is not None and hasattr(weight_norm_params, 'original0'):
            return weight_norm_params.original0.abs().flatten()
        return layer.weight.norm(dim=1)
