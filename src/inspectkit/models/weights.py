"""Reading local weights files and checking them against a network, in one place.

Nothing is downloaded: users pass a file saved with ``torch.save(model.state_dict(), path)``
(a dict holding it under ``"state_dict"`` or ``"model"`` works too). Files are read with
``torch.load(weights_only=True)``, so a weights file can never run code.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from inspectkit.errors import InspectkitError


def read_state_dict(
    path: str | os.PathLike[str], *, error: type[InspectkitError], what: str = "weights file"
) -> dict[str, torch.Tensor]:
    """Read a tensor state dict from ``path``; problems raise ``error`` naming the file.

    ``"module."`` prefixes left by ``DataParallel``/DDP are stripped.
    """
    p = Path(path)
    if not p.is_file():
        raise error(f"{what} {str(p)!r} does not exist (not found)")
    try:
        obj = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise error(
            f"{what} {str(p)!r} cannot be read safely as a tensor state dict "
            f"({type(exc).__name__}: {exc}); save it with torch.save(model.state_dict(), path)"
        ) from None
    for key in ("state_dict", "model"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()
    ):
        raise error(f"{what} {str(p)!r} does not hold a state dict of tensors")
    return {k.removeprefix("module."): v for k, v in obj.items()}


def state_dict_mismatch(
    own: dict[str, torch.Tensor], state: dict[str, torch.Tensor], *, ignore_prefix: str = ""
) -> list[str]:
    """What keeps ``state`` from loading into a network whose state dict is ``own``.

    Keys under ``ignore_prefix`` (e.g. a classification head replaced for K classes) may
    be missing or of another shape. Returns human-readable problems; empty when it fits.
    """

    def ignored(k: str) -> bool:
        return bool(ignore_prefix) and k.startswith(ignore_prefix)

    missing = sorted(k for k in own if k not in state and not ignored(k))
    unexpected = sorted(k for k in state if k not in own)
    wrong = [
        f"{k}: file {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
        for k in own
        if k in state and tuple(state[k].shape) != tuple(own[k].shape) and not ignored(k)
    ]
    problems = []
    if missing:
        problems.append(f"{len(missing)} tensors missing (e.g. {missing[:3]})")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected (e.g. {unexpected[:3]})")
    if wrong:
        problems.append(f"{len(wrong)} of another shape (e.g. {wrong[:2]})")
    return problems


__all__ = ["read_state_dict", "state_dict_mismatch"]
