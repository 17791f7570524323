"""PatchCore's scoring as an exportable graph: exact float32 nearest-neighbour search
against the memory bank, the paper's re-weighting, the fused upsample-and-smooth.

The library searches in blocks (a Python loop over query rows) and, for large banks, on
a projection in bfloat16; the graph computes the exact float32 search of the same
formula (``‖b‖² − 2 q·b``, the nearest row per patch; then ``‖q − b‖`` for that row, as
the library computes it) over the whole batch at once,
so its memory is patches × bank per batch (a 1,024-patch image against a 50,000-patch
bank: 200 MB). The memory bank is a graph initializer (external data when large).
"""

from __future__ import annotations

import torch
from torch import nn

from inspectkit.export.base import register_detector_exporter


def euclidean_mm(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``torch.cdist(a, b)`` as computed for large inputs: one matmul of padded rows."""
    a_norm = (a * a).sum(-1, keepdim=True)
    b_norm = (b * b).sum(-1, keepdim=True)
    a_ = torch.cat([a * -2, a_norm, torch.ones_like(a_norm)], -1)
    b_ = torch.cat([b, torch.ones_like(b_norm), b_norm], -1)
    return torch.matmul(a_, b_.T).clamp_min(1e-30).sqrt()


class PatchCoreGraph(nn.Module):
    """``x`` (float ``N×C×H×W`` in [0, 1]) → ``(scores, maps)`` of a fitted PatchCore."""

    def __init__(self, detector: nn.Module) -> None:
        super().__init__()
        self.detector = detector
        bank = detector.memory_bank.detach().float()
        self.register_buffer("bank", bank)
        self.register_buffer("bank_t", bank.T.contiguous())
        self.register_buffer("bank_sq", (bank * bank).sum(1))
        self.k = min(int(detector.num_neighbors), int(bank.shape[0]))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        emb = self.detector.embed(x)
        _, d, h, w = emb.shape
        patches = emb.permute(0, 2, 3, 1).reshape(-1, d)
        d2 = torch.addmm(self.bank_sq, patches, self.bank_t, alpha=-2)
        idx = d2.argmin(1)
        diff = patches - self.bank[idx]  # the distance from the difference, as the library
        dist = (diff * diff).sum(1).sqrt().view(-1, h * w)
        idx = idx.view(-1, h * w)
        top = dist.argmax(1, keepdim=True)
        scores = dist.gather(1, top).squeeze(1)
        if self.k > 1:
            m_star = self.bank[idx.gather(1, top).squeeze(1)]
            support = euclidean_mm(m_star, self.bank).topk(self.k, largest=False).indices
            m_test = patches.view(-1, h * w, d).gather(1, top.unsqueeze(2).expand(-1, 1, d))
            d_support = ((m_test - self.bank[support]) ** 2).sum(-1).sqrt()
            scores = (1 - torch.softmax(d_support, 1)[:, 0]) * scores
        maps = self.detector.upsample_smooth(dist.view(-1, h, w), tuple(x.shape[-2:]))
        return scores, maps


@register_detector_exporter("patchcore")
def export_patchcore(detector: nn.Module) -> nn.Module:
    return PatchCoreGraph(detector)


__all__ = ["PatchCoreGraph", "euclidean_mm", "export_patchcore"]
