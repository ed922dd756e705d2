"""Masked patch tokens gathered into a tensor of fixed length.

``tokens[masks]`` has as many rows as there are masked patches, which changes from step to
step: a compiled head then recompiles every step, and the boolean index makes the host wait
for the device. The number of masked patches of a batch has an upper bound fixed by the mask
configuration (:func:`max_masked_patches`), so the masked tokens can be gathered into that
many rows instead, the rows after the real ones repeating a real token with weight 0. A sum
weighted this way equals the sum over the masked tokens alone.
"""
from typing import Optional, Tuple

import numpy as np
import torch

from .masking import _ibot_ratio_args, check_mask_cfg


def max_masked_patches(num_crops: int, num_patches: int, mode: str, cfg: Optional[dict] = None
                       ) -> int:
    """An upper bound of the masked patches of ``num_crops`` crops of ``num_patches`` patches
    drawn by :func:`~.masking.generate_masks` with ``mode`` and ``cfg``.

    A crop with ratio ``r`` gets at most ``int(r * N)`` patches. 'stratified': crop ``i`` of
    the ``int(B p)`` masked ones has ``r < e_{i+1}`` (DINOv2's ``upperbound``); 'ibot': every
    crop has ``r <= max_k(pred_ratio[k] + pred_ratio_var[k])``. One patch per crop is added
    against float rounding at the bin edges; the bound never exceeds ``num_crops * N``.
    """
    cfg = dict(cfg or {})
    check_mask_cfg(mode, cfg)
    if mode == 'stratified':
        lo, hi = (float(v) for v in cfg.get('ratio_range', (0.1, 0.5)))
        num_masked = int(num_crops * cfg.get('mask_probability', 0.5))
        upper = np.linspace(lo, hi, num_masked + 1)[1:]
        per_crop = [int(e * num_patches) + 1 for e in upper]
    else:
        ratios, variances = (np.atleast_1d(np.asarray(v, dtype=float))
                             for v in _ibot_ratio_args(cfg))
        top = float(np.max(ratios + np.broadcast_to(variances, ratios.shape)))
        per_crop = [int(top * num_patches) + 1] * num_crops
    return int(sum(min(n, num_patches) for n in per_crop))


def padded_mask_index(masks: torch.Tensor, length: int,
                      dtype: torch.dtype = torch.float32
                      ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Row indices of the masked patches of ``masks`` (B, N) bool into the flattened (B·N)
    tokens, padded to ``length``; their weights ``1/|M_i|`` (0 on padding); the count.

    The real indices come first in row-major order, as ``tokens.flatten(0, 1)[masks.flatten()]``
    lists them; the padding repeats indices of unmasked patches. No host read and no
    data-dependent shape: a stable sort puts the masked patches first.
    """
    if masks.dim() != 2 or masks.dtype != torch.bool:
        raise ValueError(f'padded_mask_index: masks must be a (B, N) bool tensor, got '
                         f'{masks.dtype} {tuple(masks.shape)}')
    flat = masks.flatten()
    length = min(int(length), flat.numel())
    index = torch.sort((~flat).to(torch.uint8), stable=True).indices[:length]
    count = flat.sum()
    per_image = 1.0 / masks.sum(-1).clamp(min=1).to(dtype)
    valid = torch.arange(length, device=masks.device) < count
    weights = per_image.repeat_interleave(masks.shape[1])[index] * valid.to(dtype)
    return index, weights, count
