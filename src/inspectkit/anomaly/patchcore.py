"""PatchCore: a memory bank of locally aware patch features, nearest-neighbour scoring.

Roth et al., "Towards Total Recall in Industrial Anomaly Detection", CVPR 2022.

* Patch features: two mid-level layers of a backbone, each averaged over its 3×3
  neighbourhood, the deeper one upsampled to the first one's grid, concatenated.
* Memory bank: greedy k-center coreset of the training patches. The exact greedy
  selection costs ``N × M × d`` (``N`` patches, ``M`` selected), too slow on a CPU for
  large sets, so here it runs on a random projection of the features (``projection_dim``)
  and in chunks of at most ``chunk_size`` patches: each chunk picks its own share
  (``coreset_ratio``) by greedy k-center, and the union is reduced again by greedy
  k-center whenever it exceeds ``max_bank_size``. Memory stays bounded by the chunk and
  the bank, however many images are fitted; time is ``ratio × N × chunk × d``.
* Scoring: distance of every test patch to its nearest bank patch (chunked, so memory is
  flat as the bank grows); the image score is the largest patch distance re-weighted as
  in the paper by how isolated its nearest bank patch is among its ``num_neighbors``
  nearest bank neighbours; patch distances are upsampled and smoothed (σ = 4) into a map.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from inspectkit.anomaly.base import AnomalyModel, DetectorSettings
from inspectkit.anomaly.registry import register_detector
from inspectkit.errors import ConfigError
from inspectkit.models.features import FeatureExtractor
from inspectkit.runtime import progress_bar

log = logging.getLogger(__name__)

#: Elements of a distance matrix computed at once in kNN scoring (64 MiB of float32).
_DIST_BLOCK = 16 * 1024 * 1024
#: Banks up to this many patches are searched exactly: below it the approximate search's
#: top-k and re-rank gather cost more than the full float32 distances they avoid.
EXACT_SEARCH_MAX_BANK = 4096


def greedy_coreset(
    features: torch.Tensor, n_select: int, *, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Indices of ``n_select`` rows chosen by greedy k-center (farthest-point) selection.

    Each step adds the row farthest from everything chosen so far and updates the
    min-distance vector with one matrix-vector product, so memory is ``O(N)`` beyond the
    features. Start point is random (seeded through ``generator``).

    Example:
        >>> x = torch.tensor([[0.0], [0.1], [5.0], [10.0]])
        >>> sorted(greedy_coreset(x, 2, generator=torch.Generator().manual_seed(0)).tolist())
        [0, 3]
    """
    n = features.shape[0]
    if n_select >= n:
        return torch.arange(n)
    if n_select <= 0:
        return torch.zeros(0, dtype=torch.long)
    x = features.float()
    sq = (x * x).sum(1)
    # |x_i - x_j|^2 = sq_i + [x_i, 1] . (-2) [x_j, -sq_j / 2]: one fused addmv per step.
    centers = torch.cat([x, -0.5 * sq.unsqueeze(1)], 1)
    rows = torch.cat([x, torch.ones_like(sq).unsqueeze(1)], 1)
    start = int(torch.randint(n, (1,), generator=generator))
    selected = torch.empty(n_select, dtype=torch.long)
    selected[0] = start
    min_d = torch.addmv(sq, rows, centers[start], alpha=-2)
    new_d = torch.empty_like(min_d)
    for i in range(1, n_select):
        j = int(torch.argmax(min_d))
        selected[i] = j
        torch.addmv(sq, rows, centers[j], alpha=-2, out=new_d)
        torch.minimum(min_d, new_d, out=min_d)
    return selected


def fast_search_dtype(device: torch.device | str = "cpu") -> torch.dtype:
    """``bfloat16`` where matmuls in it are fast (CUDA, CPUs with AVX-512 BF16 / AMX),
    else ``float32``: the dtype PatchCore's ``search_dtype="auto"`` picks."""
    if torch.device(device).type == "cuda":
        return torch.bfloat16
    try:
        if torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported():
            return torch.bfloat16
    except (AttributeError, RuntimeError):  # pragma: no cover - older builds
        pass
    return torch.float32


def nearest_distances(
    queries: torch.Tensor,
    bank: torch.Tensor,
    bank_sq: torch.Tensor | None = None,
    *,
    projection: torch.Tensor | None = None,
    bank_projected: torch.Tensor | None = None,
    center: torch.Tensor | None = None,
    rerank: int = 16,
    search_dtype: torch.dtype = torch.float32,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Euclidean distance from each query row to its nearest bank row, and that row's index.

    Computed in blocks of queries so that at most ``_DIST_BLOCK`` distances exist at once
    (``‖b‖² − 2 q·b`` as one ``addmm`` per block, the minimum taken per row). Without
    ``projection`` and in ``float32`` this is the exact nearest neighbour. With
    ``projection`` (``D×d``, applied after subtracting ``center``) and/or a cheaper
    ``search_dtype`` (``bfloat16``), candidates are found on the cheap features and the
    ``rerank`` best re-ranked with exact float32 distances: returned distances are always
    exact distances to the returned bank row, which is nearly always the true nearest.
    The distance returned is computed from ``q − b`` for the row found, so a patch that
    nearly equals its neighbour gets a near-zero distance, not the rounding left over by
    the expanded formula.

    Example:
        >>> bank = torch.tensor([[0.0, 0.0], [3.0, 4.0]])
        >>> d, i = nearest_distances(torch.tensor([[3.0, 3.0]]), bank)
        >>> round(float(d[0]), 3), int(i[0])
        (1.0, 1)
    """
    if bank_sq is None:
        bank_sq = (bank * bank).sum(1)
    approx = projection is not None or search_dtype != torch.float32
    search_bank = bank
    if bank_projected is not None:
        search_bank = bank_projected
    elif approx:
        search_bank = bank if center is None else bank - center
        if projection is not None:
            search_bank = search_bank @ projection
    search_sq = bank_sq if not approx else (search_bank * search_bank).sum(1)
    k = min(rerank, bank.shape[0]) if approx else 1
    rows = max(1, _DIST_BLOCK // max(1, bank.shape[0]))
    bank_t = search_bank.T.to(search_dtype).contiguous()
    search_sq = search_sq.to(search_dtype)
    # one block of distances, written over by every block: a fresh block per product
    # is a fresh allocation the kernel must fault in page by page (a third of the
    # search's time on 2 cores)
    # (out= takes no part in autograd: none where the queries need gradients)
    block = (min(rows, queries.shape[0]), bank.shape[0])
    d2_buf = None if queries.requires_grad else queries.new_empty(block, dtype=search_dtype)
    dists, idx = [], []
    for s in range(0, queries.shape[0], rows):
        q = queries[s : s + rows]
        if approx:
            qs = q if center is None else q - center
            qs = qs if projection is None else qs @ projection
        else:
            qs = q
        out = None if d2_buf is None else d2_buf[: len(q)]
        d2 = torch.addmm(search_sq, qs.to(search_dtype), bank_t, alpha=-2, out=out)
        if k == 1 and not approx:
            i = d2.argmin(1)
        else:
            cand = d2.topk(k, dim=1, largest=False).indices  # q×k
            dots = torch.bmm(bank[cand], q.unsqueeze(2)).squeeze(2)  # q×k
            exact = bank_sq[cand] - 2 * dots + (q * q).sum(1, keepdim=True)
            i = cand.gather(1, exact.argmin(1, keepdim=True)).squeeze(1)
        # the distance to the row found, from the difference: ‖b‖² − 2 q·b + ‖q‖² cancels
        # where a patch nearly equals its neighbour (flat, clean surfaces), and the square
        # root magnifies that rounding: up to 4e-3 of the map scale between two exact
        # float32 searches that summed in another order (DeepPCB's bare boards)
        diff = q - bank[i]
        dists.append((diff * diff).sum(1).sqrt_())
        idx.append(i)
    return torch.cat(dists), torch.cat(idx)


@register_detector
class PatchCore(AnomalyModel):
    """PatchCore detector (memory bank + nearest neighbour) as a plain torch module.

    Args:
        backbone: torchvision / registered name, or any ``nn.Module``.
        layers: Two (or more) mid-level layers; the first sets the patch grid.
        weights: Local state-dict file for the backbone; ``None`` = seeded random init.
        coreset_ratio: Share of training patches kept in the bank (0 < r ≤ 1).
        max_bank_size: Upper bound on the bank; ``None`` for none.
        projection_dim: Dimension of the random projection used for coreset selection
            (``None`` or 0 = select on the full features).
        search_dim: Dimension of the projection used to find nearest-neighbour candidates
            at scoring time, re-ranked with exact distances (``None`` or 0 = exact search).
        rerank: Candidates per test patch re-ranked exactly when the search is approximate.
        search_dtype: Dtype of the candidate search: ``"auto"`` (``bfloat16`` where it is
            fast, see :func:`fast_search_dtype`), ``"float32"`` or ``"bfloat16"``. With
            ``search_dim=0`` and ``"float32"``, or a bank of at most
            ``EXACT_SEARCH_MAX_BANK`` patches, the search is exact.
        chunk_size: Patches per greedy-selection chunk (bounds memory and time).
        num_neighbors: Bank neighbours used in the score re-weighting (paper: b = 9).
        pool_size: Local neighbourhood of the patch features (paper: 3).
        extractor: A ready :class:`FeatureExtractor` (overrides backbone/layers/weights),
            e.g. the one :class:`SelfSupervised` trained.
        settings, **shared: The settings every detector has (``seed`` of backbone init,
            projection and coreset start; ``sigma`` of the maps, paper: 4;
            ``batch_size``, ``device``, ``progress``, ``feature_dtype``): see
            :class:`~inspectkit.anomaly.base.DetectorSettings`.

    Example:
        >>> import torch
        >>> good = torch.rand(8, 1, 64, 64)
        >>> pc = PatchCore(coreset_ratio=0.5, progress=False).fit(good)
        >>> scores, maps = pc.score(torch.rand(2, 1, 64, 64))
        >>> tuple(maps.shape)
        (2, 64, 64)
    """

    name = "patchcore"

    def __init__(
        self,
        backbone: str | nn.Module = "resnet18",
        layers: Sequence[str] = ("layer2", "layer3"),
        weights: str | os.PathLike[str] | None = None,
        *,
        coreset_ratio: float = 0.1,
        max_bank_size: int | None = 50_000,
        projection_dim: int | None = 128,
        search_dim: int | None = 128,
        rerank: int = 16,
        search_dtype: str = "auto",
        chunk_size: int = 8_192,
        num_neighbors: int = 9,
        pool_size: int = 3,
        extractor: FeatureExtractor | None = None,
        settings: DetectorSettings | None = None,
        **shared: Any,
    ) -> None:
        super().__init__(settings, **shared)
        if not 0 < coreset_ratio <= 1:
            raise ConfigError(f"coreset_ratio must be in (0, 1], got {coreset_ratio}")
        if max_bank_size is not None and max_bank_size < 1:
            raise ConfigError(f"max_bank_size must be positive or None, got {max_bank_size}")
        if chunk_size < 16:
            raise ConfigError(f"chunk_size must be at least 16 patches, got {chunk_size}")
        if num_neighbors < 1:
            raise ConfigError(f"num_neighbors must be at least 1, got {num_neighbors}")
        if pool_size < 1 or pool_size % 2 == 0:
            raise ConfigError(f"pool_size must be a positive odd number, got {pool_size}")
        self.extractor = extractor or FeatureExtractor(backbone, layers, weights, seed=self.seed)
        self.coreset_ratio = float(coreset_ratio)
        self.max_bank_size = max_bank_size
        self.projection_dim = projection_dim or 0
        self.search_dim = search_dim or 0
        if rerank < 1:
            raise ConfigError(f"rerank must be at least 1, got {rerank}")
        self.rerank = int(rerank)
        if search_dtype not in ("auto", "float32", "bfloat16"):
            raise ConfigError(
                f"search_dtype must be 'auto', 'float32' or 'bfloat16', got {search_dtype!r}"
            )
        self.search_dtype = search_dtype
        self._search_cache: tuple | None = None
        self.chunk_size = int(chunk_size)
        self.num_neighbors = int(num_neighbors)
        self.pool_size = int(pool_size)
        self.register_buffer("memory_bank", torch.zeros(0, 0))

    # ------------------------------------------------------------------ features
    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Locally aware patch features ``N×D×h×w`` of a float batch in [0, 1]."""
        feats = list(self.features(x).values())
        p = self.pool_size
        feats = [
            F.avg_pool2d(f, p, stride=1, padding=p // 2, count_include_pad=False) for f in feats
        ]
        size = feats[0].shape[-2:]
        feats = [
            f
            if f.shape[-2:] == size
            else F.interpolate(f, size=size, mode="bilinear", align_corners=False)
            for f in feats
        ]
        return torch.cat(feats, 1)

    def _patches(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        emb = self.embed(x)
        n, d, h, w = emb.shape
        return emb.permute(0, 2, 3, 1).reshape(n * h * w, d), (h, w)

    # ------------------------------------------------------------------ fit
    def _projection(self, dim: int, out_dim: int, offset: int = 1) -> torch.Tensor | None:
        if not out_dim or out_dim >= dim:
            return None
        g = torch.Generator().manual_seed(self.seed + offset)
        proj = torch.randn(dim, out_dim, generator=g) / math.sqrt(out_dim)
        return proj.to(self.device)

    def _select(
        self, feats: torch.Tensor, n_select: int, proj: torch.Tensor | None, gen
    ) -> torch.Tensor:
        x = feats if proj is None else feats @ proj
        return feats[greedy_coreset(x, n_select, generator=gen).to(feats.device)]

    @torch.no_grad()
    def _fit(self, images: torch.Tensor) -> None:
        self.eval()
        gen = torch.Generator().manual_seed(self.seed)
        proj: torch.Tensor | None = None
        buffer: list[torch.Tensor] = []
        buffered = 0
        kept: list[torch.Tensor] = []
        kept_n = 0
        total = 0
        cap = self.max_bank_size
        ratio = self.coreset_ratio
        capped = False
        bar = progress_bar(enabled=self.show_progress, total=images.shape[0], desc="PatchCore fit")

        def flush() -> None:
            nonlocal buffer, buffered, kept_n
            if not buffer:
                return
            chunk = torch.cat(buffer)
            buffer, buffered = [], 0
            share = ratio * chunk.shape[0]
            # rounded down when the bank is capped, so the chunks' shares stay under the cap
            n_sel = max(1, math.floor(share + 1e-9) if capped else math.ceil(share))
            sel = chunk if n_sel >= chunk.shape[0] else self._select(chunk, n_sel, proj, gen)
            kept.append(sel)
            kept_n += sel.shape[0]

        def reduce_bank() -> None:
            nonlocal kept, kept_n
            bank = torch.cat(kept)
            assert cap is not None
            kept = [self._select(bank, cap, proj, gen)]
            kept_n = cap

        for x in self.batches(images):
            patches, _ = self._patches(x)
            if total == 0:
                proj = self._projection(patches.shape[1], self.projection_dim)
                expected = images.shape[0] * (patches.shape[0] // x.shape[0])
                if cap is not None and ratio * expected > cap:
                    ratio = cap / expected  # each chunk takes its share of the capped bank
                    capped = True
            total += patches.shape[0]
            for s in range(0, patches.shape[0], self.chunk_size):
                part = patches[s : s + self.chunk_size]
                room = self.chunk_size - buffered
                buffer.append(part[:room])
                buffered += min(room, part.shape[0])
                if buffered >= self.chunk_size:
                    flush()
                    if part.shape[0] > room:
                        buffer.append(part[room:])
                        buffered += part.shape[0] - room
            if cap is not None and kept_n > 2 * cap:
                reduce_bank()
            bar.update(x.shape[0])
        flush()
        if cap is not None and kept_n > cap:
            reduce_bank()
        bar.close()
        self.memory_bank = torch.cat(kept).contiguous()
        self._search_cache = None
        log.info("PatchCore bank: %d of %d patches", self.memory_bank.shape[0], total)

    # ------------------------------------------------------------------ score
    def _score_batch(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        patches, (h, w) = self._patches(x)
        n = x.shape[0]
        bank = self.memory_bank
        cache = self._search_cache
        if cache is None or cache[0].shape[0] != bank.shape[0] or cache[0].device != bank.device:
            proj = self._projection(bank.shape[1], self.search_dim, offset=2)
            dtype = (
                fast_search_dtype(bank.device)
                if self.search_dtype == "auto"
                else getattr(torch, self.search_dtype)
            )
            if bank.shape[0] <= EXACT_SEARCH_MAX_BANK:  # small bank: exact is cheaper
                proj, dtype = None, torch.float32
            approx = proj is not None or dtype != torch.float32
            center = bank.mean(0) if approx else None  # smaller norms: less rounding
            projected = bank if center is None else bank - center
            projected = projected @ proj if proj is not None else projected
            cache = (projected, (bank * bank).sum(1), proj, center, dtype)
            self._search_cache = cache  # type: ignore[assignment]
        projected, bank_sq, proj, center, dtype = cache
        dist, nn_idx = nearest_distances(
            patches,
            bank,
            bank_sq,
            projection=proj,
            bank_projected=projected,
            center=center,
            rerank=self.rerank,
            search_dtype=dtype,
        )
        dist = dist.view(n, h * w)
        nn_idx = nn_idx.view(n, h * w)
        # Re-weighting (paper, eq. 7): the most anomalous patch m_test and its nearest bank
        # patch m*; weight = 1 - softmax over m*'s b nearest bank neighbours.
        top = dist.argmax(1)
        ar = torch.arange(n, device=x.device)
        s_star = dist[ar, top]
        scores = s_star
        k = min(self.num_neighbors, bank.shape[0])
        if k > 1:
            m_star = bank[nn_idx[ar, top]]  # n×D
            d_star = torch.cdist(m_star, bank)  # n×M
            support = d_star.topk(k, largest=False).indices  # n×k (m* itself first)
            m_test = patches.view(n, h * w, -1)[ar, top]  # n×D
            d_support = torch.cdist(m_test.unsqueeze(1), bank[support]).squeeze(1)  # n×k
            weights = 1 - torch.softmax(d_support, 1)[:, 0]
            scores = weights * s_star
        maps = self.upsample_smooth(dist.view(n, h, w), tuple(x.shape[-2:]))
        return scores, maps

    def _reset_own_caches(self) -> None:
        self._search_cache = None


__all__ = ["PatchCore", "fast_search_dtype", "greedy_coreset", "nearest_distances"]
