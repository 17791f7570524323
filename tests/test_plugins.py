"""A third-party package registers a stage under the ``inspectkit.stages`` entry point."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from plugin_support import install_package, last_json, run_python

import inspectkit as ik

PLUGIN_PYPROJECT = """
[build-system]
requires = ["setuptools>=61"]
build-backend = "setuptools.build_meta"

[project]
name = "inspectkit-plugin-invert"
version = "0.1.0"
dependencies = []

[project.entry-points."inspectkit.stages"]
invert = "ik_invert:Invert"
"""

PLUGIN_CODE = '''
"""A tiny inspectkit plugin: inverts uint8 images."""
from inspectkit import ImageSet, Stage, StageConfig


class Invert(Stage[ImageSet, ImageSet]):
    preserves_type = True

    class Config(StageConfig):
        maximum: int = 255

    def run(self, data):
        self.check_input(data)
        return data.replace(images=self.config.maximum - data.image_tensor())
'''

SCRIPT = """
import json, sys, torch
import inspectkit as ik
from inspectkit.records import ImageSet, SampleMeta

spec = {"stages": [{"name": "wrangle", "config": {"size": 4}},
                   {"name": "invert", "config": {"maximum": 200}}]}
pipe = ik.Pipeline.from_spec(spec)
data = ImageSet(images=torch.full((2, 1, 8, 8), 50, dtype=torch.uint8),
                samples=[SampleMeta(id="a"), SampleMeta(id="b")])
out = pipe.fit(data).run(data)
pipe.save(sys.argv[1])
again = ik.Pipeline.load(sys.argv[1])
print(json.dumps({"stages": ik.available_stages(),
                  "value": int(out.image_tensor().flatten()[0]),
                  "shape": list(out.image_tensor().shape),
                  "reloaded": int(again.run(data).image_tensor().flatten()[0]),
                  "saved_names": [s["name"] for s in again.spec()["stages"]]}))
"""


@pytest.fixture(scope="module")
def installed_plugin(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return install_package(
        tmp_path_factory.mktemp("plugin"),
        {"pyproject.toml": PLUGIN_PYPROJECT, "ik_invert.py": PLUGIN_CODE},
    )


def test_plugin_stage_is_found_built_saved_and_loaded(
    installed_plugin: Path, tmp_path: Path
) -> None:
    proc = run_python(SCRIPT, str(tmp_path / "model"), paths=(installed_plugin,))
    result = last_json(proc)
    assert "invert" in result["stages"]
    assert result["value"] == 150 and result["reloaded"] == 150
    assert result["shape"] == [2, 1, 4, 4]
    assert result["saved_names"] == ["wrangle", "invert"]


def test_plugin_absent_means_clear_error_on_load(installed_plugin: Path, tmp_path: Path) -> None:
    proc = run_python(SCRIPT, str(tmp_path / "model"), paths=(installed_plugin,))
    assert proc.returncode == 0, proc.stderr
    # this process does not have the plugin on its path
    with pytest.raises(ik.PersistenceError, match="unknown stage 'invert'"):
        ik.Pipeline.load(tmp_path / "model")


def test_register_stage_rejects_non_stages_and_name_clashes() -> None:
    with pytest.raises(ik.PipelineError, match="not a Stage"):
        ik.register_stage(dict)  # type: ignore[arg-type]

    class A(ik.Stage[ik.ImageSet, ik.ImageSet]):
        name = "test_clash"

    class B(ik.Stage[ik.ImageSet, ik.ImageSet]):
        name = "test_clash"

    ik.register_stage(A)
    ik.register_stage(A)  # idempotent
    with pytest.raises(ik.PipelineError, match="already registered"):
        ik.register_stage(B)


def test_builtin_stage_names_resolve() -> None:
    assert ik.get_stage("wrangle").__name__ == "Wrangle"
    assert {"wrangle", "classifier", "augment", "generate", "explain"} <= set(ik.available_stages())
    json.dumps(ik.available_stages())
