"""A stateful test stage whose state is a seeded block of numbers (for save/load tests
that must not depend on any model stage). Imported by tests and by their subprocesses."""

from __future__ import annotations

from typing import Any

import torch
from pydantic import Field

import inspectkit as ik
from inspectkit.records import ImageSet
from inspectkit.stage import Stage, StageConfig


class Ballast(Stage[ImageSet, ImageSet]):
    name = "test_ballast"
    stateful = True
    preserves_type = True

    class Config(StageConfig):
        seed: int = 0
        numbers: int = Field(250_000, ge=1)  # 1 MB of float32

    def fit(self, data: ImageSet) -> Ballast:
        self.block = torch.randn(
            self.config.numbers, generator=torch.Generator().manual_seed(self.config.seed)
        )
        self.fitted = True
        return self

    def run(self, data: ImageSet) -> ImageSet:
        self.check_fitted()
        return data

    def get_state(self) -> dict[str, Any]:
        return {"block": self.block}

    def set_state(self, state: dict[str, Any]) -> None:
        block = state["block"]
        if not isinstance(block, torch.Tensor) or block.numel() != self.config.numbers:
            raise ik.DataError("Ballast state must hold its block of numbers")
        self.block = block
        self.fitted = True


ik.register_stage(Ballast)


def expected_block(seed: int, numbers: int = 250_000) -> torch.Tensor:
    return torch.randn(numbers, generator=torch.Generator().manual_seed(seed))
