"""Block-wise patch masking for iBOT / iBOT-vMF / SimDINOv2 (pure numpy).

Every function takes an explicit ``np.random.Generator`` so masks depend only on the
generator's seed, never on global random state.

Two ways of choosing how much of each image to mask:

* ``'ibot'`` (iBOT ``ImageFolderMask.get_pred_ratio``): every image (and every global
  crop of it) independently picks one entry ``k`` of ``pred_ratio`` uniformly, then
  ``r ~ U(pred_ratio[k] - pred_ratio_var[k], pred_ratio[k] + pred_ratio_var[k])``
  (``r = pred_ratio[k]`` when the variance is 0). The published recipe
  ``pred_ratio=(0, 0.3), pred_ratio_var=(0, 0.2)`` leaves half of the crops unmasked and
  masks the others with ``r ~ U(0.1, 0.5)``. The smallest block area is iBOT's
  ``(min(h, w) // 3) ** 2`` (16 on a 14x14 grid) and the block size is not capped.
* ``'stratified'`` (DINOv2 ``collate_data_and_cast``, unchanged in SimDINOv2): of the
  ``B`` crops of a batch exactly ``int(B * mask_probability)`` are masked; with
  ``n`` of them and edges ``e = linspace(lo, hi, n + 1)`` the i-th gets
  ``r_i ~ U(e_i, e_{i+1})``; the masked and unmasked crops are then shuffled together.
  Blocks have at least 4 patches and at most ``int(0.5 * h * w)`` (98 on 14x14).
  (DINOv2 also computes ``sum_i int(N * e_{i+1})`` as an ``upperbound``; it only sizes
  a buffer and does not change the masks.)

Either way an image with ratio ``r`` on an ``h x w`` grid gets ``int(r * h * w)``
patches, placed as BEiT blocks by :func:`block_mask`.
"""
import math
from typing import Optional, Sequence, Tuple, Union

import numpy as np

MASK_MODES = ('ibot', 'stratified')
PRED_SHAPES = ('block', 'rand')
_COMMON_KEYS = {'min_patches', 'max_patches', 'aspect', 'pred_shape'}
MODE_KEYS = {
    'ibot': _COMMON_KEYS | {'pred_ratio', 'pred_ratio_var'},
    'stratified': _COMMON_KEYS | {'mask_probability', 'ratio_range'},
}


def _uniform(rng: np.random.Generator, low: float, high: float) -> float:
    """``low + (high - low) * u``, defined for ``high < low`` too (like ``random.uniform``)."""
    return low + (high - low) * rng.random()


def _add_block(mask: np.ndarray, budget: int, rng: np.random.Generator,
               min_patches: float, log_aspect: Tuple[float, float]) -> int:
    """Try (at most 10 times) to mask one new rectangle; return how many patches it added.

    Area ``a ~ U(min_patches, budget)``, aspect ``rho = exp(U(log lo, log hi))``; the block
    is ``round(sqrt(a * rho))`` rows by ``round(sqrt(a / rho))`` columns, strictly smaller
    than the grid, anywhere on it (both ends inclusive). It is accepted when it adds
    between 1 and ``budget`` unmasked patches.
    """
    grid_h, grid_w = mask.shape
    for _ in range(10):
        area = _uniform(rng, min_patches, budget)
        aspect = math.exp(_uniform(rng, *log_aspect))
        h = int(round(math.sqrt(area * aspect)))
        w = int(round(math.sqrt(area / aspect)))
        if w < grid_w and h < grid_h:
            top = int(rng.integers(0, grid_h - h + 1))
            left = int(rng.integers(0, grid_w - w + 1))
            window = mask[top:top + h, left:left + w]
            new = h * w - int(window.sum())
            if 0 < new <= budget:
                window[...] = True
                return new
    return 0


def block_mask(grid_hw: Tuple[int, int],
               num_masked: int,
               rng: np.random.Generator,
               min_patches: float = 4,
               max_patches: Optional[int] = None,
               aspect: Tuple[float, float] = (0.3, 1 / 0.3)) -> np.ndarray:
    """BEiT block-wise mask with (up to) ``num_masked`` True entries.

    Rectangles from :func:`_add_block` are added, each with a budget of
    ``min(num_masked - count, max_patches)``, until ``count == num_masked`` or until 10
    attempts in a row fail. As in BEiT / iBOT / DINOv2 the result can therefore fall a
    little short of ``num_masked`` (never above it): the last few patches often find
    no rectangle that fits the remaining budget.

    Args:
        grid_hw: (h, w) of the patch grid.
        num_masked: target number of masked patches, ``0 <= num_masked <= h * w``.
        rng: the random generator.
        min_patches: lower end of the block-area draw (a block can still end up smaller,
            from rounding, overlap, or when the remaining budget is below it).
        max_patches: cap on the patches one block may add (None: no cap).
        aspect: (min, max) block aspect ratio h / w, drawn log-uniformly.

    Returns:
        bool array of shape (h, w).
    """
    grid_h, grid_w = (int(v) for v in grid_hw)
    if grid_h <= 0 or grid_w <= 0:
        raise ValueError(f'block_mask: grid_hw must be positive, got {tuple(grid_hw)}')
    num_masked = int(num_masked)
    if not 0 <= num_masked <= grid_h * grid_w:
        raise ValueError(f'block_mask: num_masked={num_masked} is outside '
                         f'[0, {grid_h * grid_w}] for grid {grid_h}x{grid_w}')
    if not (0 < aspect[0] <= aspect[1]):
        raise ValueError(f'block_mask: aspect must be 0 < min <= max, got {tuple(aspect)}')
    if max_patches is not None and max_patches < 1:
        raise ValueError(f'block_mask: max_patches must be >= 1 or None, got {max_patches}')
    log_aspect = (math.log(aspect[0]), math.log(aspect[1]))
    cap = num_masked if max_patches is None else int(max_patches)

    mask = np.zeros((grid_h, grid_w), dtype=bool)
    count = 0
    while count < num_masked:
        added = _add_block(mask, min(num_masked - count, cap), rng, min_patches, log_aspect)
        if added == 0:
            break
        count += added
    return mask


def random_mask(grid_hw: Tuple[int, int], num_masked: int,
                rng: np.random.Generator) -> np.ndarray:
    """Exactly ``num_masked`` patches chosen uniformly at random (iBOT ``pred_shape='rand'``)."""
    grid_h, grid_w = (int(v) for v in grid_hw)
    flat = np.zeros(grid_h * grid_w, dtype=bool)
    flat[rng.permutation(grid_h * grid_w)[:int(num_masked)]] = True
    return flat.reshape(grid_h, grid_w)


def _as_tuple(value, name: str) -> Tuple[float, ...]:
    if isinstance(value, (int, float, np.floating, np.integer)):
        return (float(value), )
    if isinstance(value, Sequence) and len(value) > 0:
        return tuple(float(v) for v in value)
    raise TypeError(f'{name} must be a number or a non-empty sequence of numbers, got {value!r}')


def ibot_mask_ratios(batch_size: int,
                     rng: np.random.Generator,
                     pred_ratio: Union[float, Sequence[float]] = (0.0, 0.3),
                     pred_ratio_var: Union[float, Sequence[float]] = (0.0, 0.2)) -> np.ndarray:
    """iBOT masking ratio of each of ``batch_size`` crops, drawn independently.

    ``k ~ U{0..K-1}``, ``r = pred_ratio[k] + pred_ratio_var[k] * (2u - 1)``, ``u ~ U(0, 1)``
    (no draw when the variance is 0). A scalar variance is used for every ratio, as iBOT
    does. Requires ``var <= ratio`` (iBOT asserts it) and ``ratio + var <= 1``.

    Returns:
        float64 array of shape (batch_size,).
    """
    ratios = _as_tuple(pred_ratio, 'pred_ratio')
    variances = _as_tuple(pred_ratio_var, 'pred_ratio_var')
    if len(variances) == 1 and len(ratios) > 1:
        variances = variances * len(ratios)
    if len(variances) != len(ratios):
        raise ValueError(f'pred_ratio_var {variances} must have the length of pred_ratio {ratios}')
    for r, v in zip(ratios, variances):
        if not (0 <= v <= r and r + v <= 1):
            raise ValueError(f'pred_ratio={r} with pred_ratio_var={v}: need 0 <= var <= ratio '
                             'and ratio + var <= 1')
    ratios, variances = np.asarray(ratios), np.asarray(variances)
    choice = rng.integers(0, len(ratios), size=batch_size)
    offsets = variances[choice] * (2.0 * rng.random(batch_size) - 1.0)
    return ratios[choice] + offsets


def stratified_mask_ratios(batch_size: int,
                           rng: np.random.Generator,
                           mask_probability: float = 0.5,
                           ratio_range: Tuple[float, float] = (0.1, 0.5)) -> np.ndarray:
    """DINOv2 masking ratios: ``int(B * p)`` crops masked, one per linspace bin, shuffled.

    With ``n = int(batch_size * mask_probability)`` and ``e = linspace(lo, hi, n + 1)``,
    ratio ``r_i ~ U(e_i, e_{i+1})`` for ``i < n``, 0 for the other ``batch_size - n`` crops,
    and the ``batch_size`` values are put in a uniformly random order.

    Returns:
        float64 array of shape (batch_size,); exactly ``n`` entries are > 0 when lo > 0.
    """
    if not 0 <= mask_probability <= 1:
        raise ValueError(f'mask_probability must be in [0, 1], got {mask_probability}')
    lo, hi = (float(v) for v in ratio_range)
    if not 0 <= lo <= hi <= 1:
        raise ValueError(f'ratio_range must satisfy 0 <= lo <= hi <= 1, got {tuple(ratio_range)}')
    num_masked_crops = int(batch_size * mask_probability)
    edges = np.linspace(lo, hi, num_masked_crops + 1)
    ratios = np.zeros(batch_size)
    ratios[:num_masked_crops] = edges[:-1] + (edges[1:] - edges[:-1]) * rng.random(num_masked_crops)
    return ratios[rng.permutation(batch_size)]


def _ibot_ratio_args(cfg: dict):
    """(pred_ratio, pred_ratio_var): the published (0, 0.3) / (0, 0.2) when neither is
    given; a ``pred_ratio`` given alone has variance 0 (iBOT's ``--pred_ratio_var`` default)."""
    if 'pred_ratio' not in cfg:
        return (0.0, 0.3), cfg.get('pred_ratio_var', (0.0, 0.2))
    return cfg['pred_ratio'], cfg.get('pred_ratio_var', 0.0)


def check_mask_cfg(mode: str, cfg: dict) -> None:
    """Raise a one-line error for an unknown mode, an unknown key or a bad value."""
    if mode not in MASK_MODES:
        raise ValueError(f"mask mode must be one of {MASK_MODES}, got {mode!r}")
    unknown = set(cfg) - MODE_KEYS[mode]
    if unknown:
        raise TypeError(f'unknown {mode!r} masking option(s) {sorted(unknown)}; '
                        f'allowed: {sorted(MODE_KEYS[mode])}')
    if cfg.get('pred_shape', 'block') not in PRED_SHAPES:
        raise ValueError(f"pred_shape must be one of {PRED_SHAPES}, got {cfg['pred_shape']!r}")
    aspect = cfg.get('aspect', (0.3, 1 / 0.3))
    if not (isinstance(aspect, Sequence) and len(aspect) == 2 and 0 < aspect[0] <= aspect[1]):
        raise ValueError(f'aspect must be (min, max) with 0 < min <= max, got {aspect!r}')
    if cfg.get('max_patches') is not None and cfg['max_patches'] < 1:
        raise ValueError(f"max_patches must be >= 1 or None, got {cfg['max_patches']!r}")
    if cfg.get('min_patches', 0) < 0:
        raise ValueError(f"min_patches must be >= 0, got {cfg['min_patches']!r}")
    # Validate the ratio options with a throw-away draw.
    rng = np.random.default_rng(0)
    if mode == 'ibot':
        ibot_mask_ratios(1, rng, *_ibot_ratio_args(cfg))
    else:
        stratified_mask_ratios(1, rng, cfg.get('mask_probability', 0.5),
                               cfg.get('ratio_range', (0.1, 0.5)))


def generate_masks(batch_size: int,
                   grid_hw: Tuple[int, int],
                   mode: str = 'ibot',
                   rng: Optional[np.random.Generator] = None,
                   **cfg) -> np.ndarray:
    """Masks for ``batch_size`` crops on an ``h x w`` patch grid.

    Args:
        batch_size: number of crops (for 'stratified' this is *all* global crops of the
            batch, e.g. 2 x images, since DINOv2 stratifies over them together).
        grid_hw: (h, w) patch grid.
        mode: 'ibot' or 'stratified' (see the module docstring).
        rng: the random generator (required).
        **cfg: 'ibot': ``pred_ratio``, ``pred_ratio_var`` (default (0, 0.3) / (0, 0.2);
            0 when only ``pred_ratio`` is given); 'stratified':
            ``mask_probability``, ``ratio_range``; both: ``min_patches`` (default iBOT
            ``(min(h, w) // 3) ** 2`` / DINOv2 4), ``max_patches`` (default None /
            ``int(0.5 * h * w)``), ``aspect`` (0.3, 1/0.3), ``pred_shape`` 'block'
            (default) or 'rand' (iBOT's uniformly random patches).

    Returns:
        bool array (batch_size, h, w).
    """
    if rng is None:
        raise TypeError('generate_masks needs an explicit rng (np.random.Generator)')
    check_mask_cfg(mode, cfg)
    grid_h, grid_w = (int(v) for v in grid_hw)
    if mode == 'ibot':
        ratios = ibot_mask_ratios(batch_size, rng, *_ibot_ratio_args(cfg))
        min_patches = cfg.get('min_patches', (min(grid_h, grid_w) // 3)**2)
        max_patches = cfg.get('max_patches', None)
    else:
        ratios = stratified_mask_ratios(batch_size, rng, cfg.get('mask_probability', 0.5),
                                        cfg.get('ratio_range', (0.1, 0.5)))
        min_patches = cfg.get('min_patches', 4)
        max_patches = cfg.get('max_patches', max(1, int(0.5 * grid_h * grid_w)))
    aspect = tuple(cfg.get('aspect', (0.3, 1 / 0.3)))
    shape = cfg.get('pred_shape', 'block')

    masks = np.zeros((batch_size, grid_h, grid_w), dtype=bool)
    for i, ratio in enumerate(ratios):
        num = int(ratio * grid_h * grid_w)
        if num == 0:
            continue
        if shape == 'block':
            masks[i] = block_mask((grid_h, grid_w), num, rng, min_patches, max_patches, aspect)
        else:
            masks[i] = random_mask((grid_h, grid_w), num, rng)
    return masks


def mask_law(patch_size: int = 16, num_global_views: int = 2, mask_mode: str = 'ibot',
             mask_cfg: Optional[dict] = None, mask_start_epoch: int = 0) -> dict:
    """The checked arguments of the global-view masks as one plain dict (tuples, no
    ConfigDict), so that two copies of a law compare equal when they are the same law."""
    if not isinstance(patch_size, int) or patch_size <= 0:
        raise ValueError(f'patch_size must be a positive int, got {patch_size!r}')
    if not isinstance(num_global_views, int) or num_global_views <= 0:
        raise ValueError(f'num_global_views must be a positive int, got {num_global_views!r}')
    if mask_mode not in MASK_MODES:
        raise ValueError(f'mask_mode must be one of {MASK_MODES}, got {mask_mode!r}')
    cfg = {k: tuple(v) if isinstance(v, (list, tuple)) else v
           for k, v in dict(mask_cfg or {}).items()}
    check_mask_cfg(mask_mode, cfg)
    return dict(patch_size=patch_size, num_global_views=num_global_views, mask_mode=mask_mode,
                mask_cfg=cfg, mask_start_epoch=int(mask_start_epoch))


def global_grid(height: int, width: int, patch_size: int) -> Tuple[int, int]:
    """The patch grid of ``height x width`` global crops; an error when a crop is smaller
    than one patch."""
    grid = (int(height) // patch_size, int(width) // patch_size)
    if min(grid) == 0:
        raise ValueError(f'global views of {height}x{width} px are smaller than '
                         f'patch_size={patch_size}')
    return grid


def global_view_masks(num_images: int, grid_hw: Tuple[int, int], num_global_views: int,
                      mode: str, rng: np.random.Generator, masked: bool = True,
                      **cfg) -> np.ndarray:
    """Masks of the ``num_global_views`` global crops of ``num_images`` images,
    (num_images, num_global_views, h, w) bool; all False when ``masked`` is False (iBOT's
    ``pred_start_epoch``).

    The ``num_global_views * num_images`` crops are drawn in one :func:`generate_masks`
    call, view-major as DINOv2 collates them ('stratified' counts them all together)."""
    num_crops = num_global_views * num_images
    if not masked:
        return np.zeros((num_images, num_global_views, *grid_hw), dtype=bool)
    masks = generate_masks(num_crops, grid_hw, mode, rng, **cfg)
    masks = masks.reshape(num_global_views, num_images, *masks.shape[1:])
    return np.ascontiguousarray(masks.transpose(1, 0, 2, 3))
