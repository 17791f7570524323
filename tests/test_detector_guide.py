"""The "Add a detector" guide of docs/architecture.md, run as written, by each of its
three routes: a module imported in code, a file in ``inspectkit.anomaly``'s folder, and
a package installed with an ``inspectkit.detectors`` entry point."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from plugin_support import install_package, last_json, run_python

import inspectkit as ik
from inspectkit.errors import InspectkitError

TESTS = Path(__file__).resolve().parent
GUIDE = TESTS.parent / "docs" / "architecture.md"


@pytest.fixture(scope="module")
def guide() -> dict[str, str]:
    """The guide's code blocks by name (``<!-- guide:detector/NAME -->`` before each)."""
    pattern = r"<!-- guide:detector/(\S+) -->\s*```\w*\n(.*?)```"
    blocks = dict(re.findall(pattern, GUIDE.read_text(), re.S))
    assert {"pixel_gaussian.py", "pyproject.toml", "usage.py"} <= set(blocks), sorted(blocks)
    return blocks


#: ``good`` (20 good parts) and ``parts`` (6 good, then 6 with a dark square), the names
#: the guide's usage block expects.
DATA = """
import json
from anomaly_support import flat_parts
from inspectkit.records import ImageSet

good = flat_parts(20, 0, size=64)
parts = ImageSet.concat([flat_parts(6, 1, size=64), flat_parts(6, 2, defect=True, size=64)])
"""

#: After the usage block: what it produced, and the ensemble it built, fitted.
REPORT = """
reloaded = again.run(parts)
both.fit(good)
mixed = both.run(parts)
print(json.dumps({
    "scores": result.scores.tolist(),
    "flagged": result.is_anomalous.tolist(),
    "maps": list(result.maps.shape),
    "threshold": result.threshold,
    "reloaded": reloaded.scores.tolist(),
    "reloaded_threshold": reloaded.threshold,
    "detector": type(pipe.stages[0].detector).__name__,
    "members": [type(m).__name__ for m in both.detector.members],
    "mixed": mixed.scores.tolist(),
}))
"""

#: A fresh process: load the saved model, score the same parts, list the detectors.
LOAD = """
from inspectkit import Pipeline
from inspectkit.anomaly import available_detectors
loaded = Pipeline.load("model")
print(json.dumps({
    "scores": loaded.run(parts).scores.tolist(),
    "module": type(loaded.stages[0].detector).__module__,
    "available": available_detectors(),
}))
"""


def check_usage(result: dict) -> None:
    """What the guide's usage block must give on these parts."""
    good, bad = result["scores"][:6], result["scores"][6:]
    assert min(bad) > max(good)  # every dark square scores above every good part
    assert all(result["flagged"][6:])
    assert result["maps"] == [12, 64, 64]
    assert result["detector"] == "PixelGaussian"
    assert result["reloaded"] == result["scores"]
    assert result["reloaded_threshold"] == result["threshold"]
    assert result["members"] == ["PixelGaussian", "PaDiM"]
    assert min(result["mixed"][6:]) > max(result["mixed"][:6])


def test_guide_detector_imported_in_code(guide: dict[str, str], tmp_path: Path) -> None:
    code = tmp_path / "code"
    code.mkdir()
    (code / "pixel_gaussian.py").write_text(guide["pixel_gaussian.py"])
    script = "import pixel_gaussian\n" + DATA + guide["usage.py"] + REPORT
    first = last_json(run_python(script, paths=(code, TESTS), cwd=tmp_path))
    check_usage(first)
    load = "import pixel_gaussian\n" + DATA + LOAD
    fresh = last_json(run_python(load, paths=(code, TESTS), cwd=tmp_path))
    assert fresh["module"] == "pixel_gaussian"
    assert "pixel_gaussian" in fresh["available"]
    assert fresh["scores"] == first["scores"]


def test_guide_detector_as_a_file_in_the_anomaly_package(
    guide: dict[str, str], tmp_path: Path
) -> None:
    # the guide's "in inspectkit" route without touching the source tree: the file sits in
    # a folder on the package's path, and nothing imports it by name
    folder = tmp_path / "anomaly"
    folder.mkdir()
    (folder / "pixel_gaussian.py").write_text(guide["pixel_gaussian.py"])
    extend = f"import inspectkit.anomaly\ninspectkit.anomaly.__path__.append({str(folder)!r})\n"
    script = extend + DATA + guide["usage.py"] + REPORT
    first = last_json(run_python(script, paths=(TESTS,), cwd=tmp_path))
    check_usage(first)
    fresh = last_json(run_python(extend + DATA + LOAD, paths=(TESTS,), cwd=tmp_path))
    assert fresh["module"] == "inspectkit.anomaly.pixel_gaussian"
    assert fresh["scores"] == first["scores"]


@pytest.fixture(scope="module")
def installed_detector(guide: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Path:
    return install_package(
        tmp_path_factory.mktemp("detector-plugin"),
        {
            "pixel_gaussian.py": guide["pixel_gaussian.py"],
            "pyproject.toml": guide["pyproject.toml"],
        },
    )


def test_installed_detector_is_found_by_entry_point(
    guide: dict[str, str], installed_detector: Path, tmp_path: Path
) -> None:
    # no import of the plugin anywhere: the entry point is the only way to it
    script = DATA + guide["usage.py"] + REPORT
    first = last_json(run_python(script, paths=(installed_detector, TESTS), cwd=tmp_path))
    check_usage(first)
    fresh = last_json(run_python(DATA + LOAD, paths=(installed_detector, TESTS), cwd=tmp_path))
    assert fresh["module"] == "pixel_gaussian"
    assert "pixel_gaussian" in fresh["available"]
    assert fresh["scores"] == first["scores"]
    # this process does not have the plugin: loading says which detector is missing
    with pytest.raises(InspectkitError, match="unknown detector 'pixel_gaussian'"):
        ik.Pipeline.load(tmp_path / "model")
