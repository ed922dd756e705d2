"""Batched, gate-masked device operations of multi-crop: no host reads, no per-sample calls.

Every per-sample choice (box, flip, colour gates and factors, blur sigma) is a tensor on the
device; an operation runs on the whole batch and a gate selects its result with
``torch.where`` (or a neutral factor), so nothing waits for the device to say which samples
to touch. The formulas are those of the kornia modules this replaces (the same as
torchvision's for the colour ops).
"""
import math

import torch
import torch.nn.functional as F

CUBIC_A = -0.75  # torch's (and PIL's) bicubic convolution coefficient


def resample_taps(start: torch.Tensor, length: torch.Tensor, out: int, mode: str):
    """Source indices and weights ``(N, out, taps)`` that resize the span
    ``[start, start + length)`` of each row to ``out`` samples, as ``F.interpolate`` of the
    sliced span (``align_corners=False``, no antialias, edge taps clamped into the span)."""
    i = torch.arange(out, device=start.device, dtype=start.dtype)
    src = (i + 0.5) * (length[:, None] / out) - 0.5
    last = length[:, None] - 1
    if mode == 'bilinear':
        src = src.clamp(min=0)
        low = src.floor()
        t = src - low
        idx = torch.stack([low, torch.minimum(low + 1, last)], -1)
        weights = torch.stack([1 - t, t], -1)
    else:  # bicubic
        low = src.floor()
        t = src - low
        offsets = torch.arange(-1, 3, device=start.device, dtype=start.dtype)
        idx = torch.minimum((low[..., None] + offsets).clamp(min=0), last[..., None])
        a = CUBIC_A
        d = torch.stack([t + 1, t, 1 - t, 2 - t], -1)  # distances to the four taps
        near = ((a + 2) * d - (a + 3)) * d * d + 1
        far = ((a * d - 5 * a) * d + 8 * a) * d - 4 * a
        weights = torch.where(d <= 1, near, far)
    return (idx + start[:, None, None]).long(), weights


def row_table(x: torch.Tensor) -> torch.Tensor:
    """(N, C, H, W) -> (N * H, C * W): one image row per table row, so that resampling picks
    whole rows with ``index_select`` (contiguous copies) instead of element gathers."""
    n, c, h, w = x.shape
    return x.permute(0, 2, 1, 3).reshape(n * h, c * w)


def pick_and_blend(table: torch.Tensor, idx: torch.Tensor, weights: torch.Tensor,
                   rows_per_image: int) -> torch.Tensor:
    """Rows ``idx`` (N, out, taps) of each image's block of ``table``, blended by
    ``weights``: (N, out, table columns)."""
    n, out, taps = idx.shape
    first = torch.arange(n, device=idx.device).view(n, 1, 1) * rows_per_image
    picked = table.index_select(0, (idx + first).view(-1)).view(n * out, taps, -1)
    return torch.bmm(weights.reshape(n * out, 1, taps), picked).view(n, out, -1)


def crop_resize(x: torch.Tensor, box: torch.Tensor, flip: torch.Tensor, size: int,
                mode: str, table: torch.Tensor = None) -> torch.Tensor:
    """One resized crop per image of ``x`` (N, C, H, W): ``box`` (N, 4) = (top, left, h, w)
    in pixels, ``flip`` (N,) 0/1, output (N, C, size, size). Separable: the output rows are
    blends of picked input rows, then the output columns of picked columns. The flip
    reverses the column taps, so it costs nothing. ``table``: ``row_table(x)``, shared by
    the views of one batch."""
    n, c, height, width = x.shape
    top, left, h, w = box.unbind(1)
    row_idx, row_w = resample_taps(top, h, size, mode)
    col_idx, col_w = resample_taps(left, w, size, mode)
    flipped = flip.view(n, 1, 1) > 0.5
    col_idx = torch.where(flipped, col_idx.flip(1), col_idx)
    col_w = torch.where(flipped, col_w.flip(1), col_w)
    table = row_table(x) if table is None else table
    rows = pick_and_blend(table, row_idx, row_w, height).view(n, size, c, width)
    columns = rows.permute(0, 3, 1, 2).reshape(n * width, size * c)  # a column per row
    out = pick_and_blend(columns, col_idx, col_w, width).view(n, size, size, c)
    return out.permute(0, 3, 2, 1).contiguous()  # (n, size_x, size_y, c) -> (n, c, y, x)


def gray(y: torch.Tensor) -> torch.Tensor:
    """ITU-R 601 luma (PIL's ``convert('L')`` weights), (N, 1, H, W)."""
    r, g, b = y.unbind(1)
    return (0.299 * r + 0.587 * g + 0.114 * b)[:, None]


def rgb_hue_shift(y: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """Hue rotated by ``shift`` turns (N,), through HSV (kornia's ``adjust_hue``)."""
    from kornia.color import hsv_to_rgb, rgb_to_hsv
    hsv = rgb_to_hsv(y)
    hue = torch.remainder(hsv[:, :1] + shift.view(-1, 1, 1, 1) * 2 * math.pi, 2 * math.pi)
    return hsv_to_rgb(torch.cat([hue, hsv[:, 1:]], 1))


def blend_step(y: torch.Tensor, chosen: torch.Tensor, factors: torch.Tensor) -> torch.Tensor:
    """Brightness, contrast or saturation, whichever ``chosen`` (N, 3) 0/1 selects per image,
    as one affine blend ``f x + (1 - f) (mean gray | gray)``; an image with none chosen gets
    the coefficients (1, 0, 0) and is left unchanged exactly."""
    f = torch.where(chosen, factors, torch.ones_like(factors))
    scale = f.prod(1).view(-1, 1, 1, 1)  # the one chosen factor, or 1
    luma = gray(y)
    return (scale * y + (1 - f[:, 1]).view(-1, 1, 1, 1) * luma.mean((2, 3), keepdim=True)
            + (1 - f[:, 2]).view(-1, 1, 1, 1) * luma).clamp(0, 1)


def color_jitter(y: torch.Tensor, applied: torch.Tensor, factors: torch.Tensor,
                 order: torch.Tensor, with_hue: bool) -> torch.Tensor:
    """torchvision's ColorJitter with a random order per image. ``applied`` (N,) 0/1,
    ``factors`` (N, 4) brightness, contrast, saturation, hue; ``order`` (N, 4) operation
    indices. The hue shift (the costly one) runs once: the blend steps before it in each
    image's order, then the shift, then the blend steps after it."""
    on = applied.view(-1, 1) > 0.5
    ops = torch.arange(4, device=y.device, dtype=order.dtype)
    chosen = on[:, :, None] & (order[:, :, None] == ops)  # (N, step, op)
    hue_step = (order == 3).to(order.dtype).argmax(1, keepdim=True)  # (N, 1)
    steps = torch.arange(4, device=y.device, dtype=order.dtype)
    if not with_hue:
        phases = ((torch.ones_like(chosen[:, :, 0]), range(4)),)
    else:  # a blend before the shift is at step 0-2, one after it at step 1-3
        phases = ((steps < hue_step, range(3)), (steps > hue_step, range(1, 4)))
    for k, (phase, step_range) in enumerate(phases):
        for step in step_range:
            y = blend_step(y, chosen[:, step, :3] & phase[:, step:step + 1], factors[:, :3])
        if with_hue and k == 0:
            shifted = rgb_hue_shift(y, factors[:, 3])
            y = torch.where(chosen[:, :, 3].any(1).view(-1, 1, 1, 1), shifted, y).clamp(0, 1)
    return y


def grayscale(y: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
    return torch.where(gate.view(-1, 1, 1, 1) > 0.5, gray(y).expand_as(y), y)


def gaussian_blur(y: torch.Tensor, gate: torch.Tensor, sigma: torch.Tensor,
                  kernel: int) -> torch.Tensor:
    """Separable Gaussian blur of ``kernel`` taps, per-image ``sigma``, reflected borders
    (kornia's ``gaussian_blur2d``, whose sigma check reads the device), where ``gate``."""
    n, c, h, w = y.shape
    x = torch.arange(kernel, device=y.device, dtype=y.dtype) - kernel // 2
    taps = torch.exp(-x ** 2 / (2 * sigma.view(-1, 1) ** 2))
    taps = (taps / taps.sum(1, keepdim=True)).repeat_interleave(c, 0)  # (n * c, kernel)
    half = kernel // 2
    padded = F.pad(y, (half, half, half, half), mode='reflect').view(1, n * c, h + 2 * half,
                                                                      w + 2 * half)
    # one grouped convolution per direction: a kernel per image and channel
    rows = F.conv2d(padded, taps.view(n * c, 1, 1, kernel), groups=n * c)
    blurred = F.conv2d(rows, taps.view(n * c, 1, kernel, 1), groups=n * c).view(n, c, h, w)
    return torch.where(gate.view(-1, 1, 1, 1) > 0.5, blurred, y)


def solarize(y: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
    """PIL's ``ImageOps.solarize(threshold=128)`` on [0, 1] values, where ``gate``."""
    return torch.where((gate.view(-1, 1, 1, 1) > 0.5) & (y >= 0.5), 1 - y, y)
