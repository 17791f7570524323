"""Tiled inspection at native resolution: tile grid, stitching weights, stitching.

Small defects on large parts (a 10-px spur on a 640×640 board) vanish when the whole
image is squashed to a backbone's working size. With ``AnomalyDetector(tile=T)`` the
image is cut into ``T×T`` tiles that overlap by ``overlap`` (a share of ``T``), every
tile is fitted on / scored by the detector as an image of its own, and the tile maps
are stitched back into one map of the whole image; the image score is the maximum of
the stitched map. Each step is a plain function, so it can be rebuilt outside torch:

1. :func:`tile_grid` — the top-left corners: along each side ``n = ⌈(L − T) / (T·(1 − o))⌉ + 1``
   tiles, their starts spread evenly from 0 to ``L − T`` (rounded), so the first and last
   tiles touch the borders and neighbours overlap by at least ``o·T``;
2. :func:`cut_tiles` — ``N×C×H×W`` → ``(N·G)×C×T×T``, image-major (tile ``g`` of image
   ``i`` is row ``i·G + g``);
3. :func:`tile_window` — stitching weight of each tile pixel: a separable ramp
   ``w(d) = min(1, (d + 1) / (r + 1))`` over the distance ``d`` to the tile's border, ramp
   ``r = ⌈o·T / 2⌉`` (1 everywhere without overlap), so seams blend and each pixel's
   weights sum to > 0;
4. :func:`stitch` — ``Σ_g w·M_g / Σ_g w`` over the tiles covering each pixel.

Example:
    >>> tile_grid((640, 640), 256, 0.25)
    [(0, 0), (0, 192), (0, 384), (192, 0), (192, 192), (192, 384), (384, 0), (384, 192), (384, 384)]
"""

from __future__ import annotations

import math

import torch

from inspectkit.errors import ConfigError, DataError


def _starts(length: int, tile: int, overlap: float) -> list[int]:
    if length <= tile:
        return [0]
    step = tile * (1 - overlap)
    n = math.ceil((length - tile) / step - 1e-9) + 1
    return [round(i * (length - tile) / (n - 1)) for i in range(n)]


def tile_grid(size: tuple[int, int], tile: int, overlap: float) -> list[tuple[int, int]]:
    """Top-left corners ``(y, x)`` of the tiles covering an image of ``size`` (row-major)."""
    if tile < 16:
        raise ConfigError(f"tiles need at least 16 pixels per side, got {tile}")
    if not 0 <= overlap < 1:
        raise ConfigError(f"tile overlap is a share of the tile in [0, 1), got {overlap}")
    h, w = size
    if h < tile or w < tile:
        raise DataError(
            f"images of {h}×{w} are smaller than the {tile}-pixel tiles; use a smaller tile or "
            "no tiling"
        )
    return [(y, x) for y in _starts(h, tile, overlap) for x in _starts(w, tile, overlap)]


def cut_tiles(images: torch.Tensor, grid: list[tuple[int, int]], tile: int) -> torch.Tensor:
    """``N×C×H×W`` → ``(N·G)×C×T×T`` tiles, image-major."""
    parts = [images[:, :, y : y + tile, x : x + tile] for y, x in grid]
    return torch.stack(parts, 1).flatten(0, 1)


def tile_window(tile: int, overlap: float) -> torch.Tensor:
    """``T×T`` stitching weights: ramps of ``⌈o·T/2⌉`` pixels at the borders, 1 inside."""
    ramp = math.ceil(overlap * tile / 2)
    d = torch.arange(tile, dtype=torch.float32)
    d = torch.minimum(d, tile - 1 - d)
    w = ((d + 1) / (ramp + 1)).clamp(max=1.0)
    return w.unsqueeze(1) * w.unsqueeze(0)


def stitch(
    tile_maps: torch.Tensor,
    grid: list[tuple[int, int]],
    size: tuple[int, int],
    window: torch.Tensor,
) -> torch.Tensor:
    """``(N·G)×T×T`` tile maps → ``N×H×W`` maps: window-weighted average per pixel."""
    g = len(grid)
    n = tile_maps.shape[0] // g
    tile = tile_maps.shape[-1]
    h, w = size
    out = torch.zeros(n, h, w, dtype=torch.float32, device=tile_maps.device)
    weight = torch.zeros(h, w, dtype=torch.float32, device=tile_maps.device)
    maps = tile_maps.view(n, g, tile, tile).float()
    win = window.to(tile_maps.device)
    for k, (y, x) in enumerate(grid):
        out[:, y : y + tile, x : x + tile] += maps[:, k] * win
        weight[y : y + tile, x : x + tile] += win
    return out / weight


__all__ = ["cut_tiles", "stitch", "tile_grid", "tile_window"]
