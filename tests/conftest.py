"""Shared fixtures: where the public data sets are, and small synthetic sets."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from inspectkit.records import ImageSet, SampleMeta

REPO = Path(__file__).resolve().parents[1]

os.environ.setdefault("INSPECTKIT_PROGRESS", "0")


def find_data_root() -> Path | None:
    """``INSPECTKIT_DATA`` if set, else ``../shared/data`` beside the repository."""
    env = os.environ.get("INSPECTKIT_DATA")
    candidates = [Path(env)] if env else []
    candidates.append(REPO.parent / "shared" / "data")
    for c in candidates:
        if c.is_dir():
            return c
    return None


@pytest.fixture(scope="session")
def data_root() -> Path:
    root = find_data_root()
    if root is None:
        pytest.skip(
            "public data sets not found: set INSPECTKIT_DATA or place them in ../shared/data"
        )
    return root


def _dataset(root: Path, name: str) -> Path:
    path = root / name
    if not path.exists():
        pytest.skip(f"{name} not found under {root}")
    return path


@pytest.fixture(scope="session")
def wm811k_dir(data_root: Path) -> Path:
    return _dataset(data_root, "wm811k")


@pytest.fixture(scope="session")
def magnetic_tile_dir(data_root: Path) -> Path:
    return _dataset(data_root, "magnetic_tile")


@pytest.fixture(scope="session")
def neu_det_dir(data_root: Path) -> Path:
    return _dataset(data_root, "neu_det")


def make_image_set(
    n: int = 12,
    classes: tuple[str, ...] = ("a", "b", "c"),
    size: int = 16,
    channels: int = 1,
    kind: str = "image",
    seed: int = 0,
) -> ImageSet:
    """A small labelled set whose classes differ visibly (for quick learning tests)."""
    g = torch.Generator().manual_seed(seed)
    labels = [classes[i % len(classes)] for i in range(n)]
    if kind == "wafer":
        images = torch.randint(0, 3, (n, 1, size, size), generator=g, dtype=torch.uint8)
    else:
        images = torch.randint(0, 256, (n, channels, size, size), generator=g, dtype=torch.uint8)
    samples = [SampleMeta(id=f"s{i}", label=lab) for i, lab in enumerate(labels)]
    return ImageSet(images=images, samples=samples, classes=list(classes), kind=kind)


@pytest.fixture
def tiny_set() -> ImageSet:
    return make_image_set()


@pytest.fixture
def one_torch_thread():
    """Small networks train faster on one thread, and much faster on a shared machine
    (modules of such tests use it with ``pytestmark = pytest.mark.usefixtures(...)``)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
