"""The "Add a source (layout)" and "Add a CLI command" guides of docs/architecture.md, run
as written by each route they name: a module imported in code, a file in the package's
folder, and a package installed with an entry point (``inspectkit.sources``,
``inspectkit.commands``)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from plugin_support import install_package, last_json, run_python
from test_cli import TINY_CLASSIFIER, make_tree

GUIDE = Path(__file__).resolve().parents[1] / "docs" / "architecture.md"


@pytest.fixture(scope="module")
def guide() -> dict[str, str]:
    """The guides' code blocks by name (``<!-- guide:source/NAME -->`` before each)."""
    pattern = r"<!-- guide:((?:source|command)/\S+) -->\s*```\w*\n(.*?)```"
    blocks = dict(re.findall(pattern, GUIDE.read_text(), re.S))
    wanted = {
        "source/csv_export.py",
        "source/pyproject.toml",
        "source/usage.py",
        "command/ik_count.py",
        "command/pyproject.toml",
        "command/usage.sh",
    }
    assert wanted <= set(blocks), sorted(blocks)
    return blocks


def make_export(root: Path, rows: list[tuple[str, str]]) -> Path:
    """A camera export: dark ``ok`` parts, bright ``scratch`` parts, listed in labels.csv."""
    rng = np.random.default_rng(0)
    root.mkdir(parents=True)
    for name, label in rows:
        base = 140 if label == "scratch" else 30
        pixels = rng.integers(0, 60, (20, 20)).astype(np.uint8) + base
        Image.fromarray(pixels).save(root / name)
    lines = ["file,label", *(f"{name},{label}" for name, label in rows)]
    (root / "labels.csv").write_text("\n".join(lines) + "\n")
    return root


LINE3 = [(f"part{i:02d}.png", "ok" if i % 2 else "scratch") for i in range(8)]

#: After the usage block: what it loaded.
SOURCE_REPORT = """
import json
print(json.dumps({"classes": parts.classes, "labels": parts.labels,
                  "inputs": len(inputs), "lazy": type(inputs.images).__name__,
                  "layouts": sources.available_layouts(),
                  "module": sources.get_layout("csv-export").load.__module__}))
"""


def check_source(result: dict) -> None:
    assert result["classes"] == ["ok", "scratch"]
    assert result["labels"] == [lab for _, lab in LINE3]
    assert result["inputs"] == 8 and result["lazy"] == "LazyImages"
    layouts = result["layouts"]
    assert layouts.index("csv-export") < layouts.index("class-folders")


def test_source_guide_module_imported_in_code(guide: dict[str, str], tmp_path: Path) -> None:
    make_export(tmp_path / "line3", LINE3)
    code = tmp_path / "code"
    code.mkdir()
    (code / "csv_export.py").write_text(guide["source/csv_export.py"])
    script = "import csv_export\n" + guide["source/usage.py"] + SOURCE_REPORT
    result = last_json(run_python(script, paths=(code,), cwd=tmp_path))
    check_source(result)
    assert result["module"] == "csv_export"
    # an empty label is an unlabelled part; a good-only detector trains on unlabelled parts
    make_export(tmp_path / "line4", [("a.png", "ok"), ("b.png", "")])
    script = (
        "import json, csv_export\nfrom inspectkit import sources\n"
        "print(json.dumps([sources.load('line4').labels,"
        " len(sources.load('line4', task='anomaly'))]))"
    )
    assert last_json(run_python(script, paths=(code,), cwd=tmp_path)) == [["ok", None], 2]


def test_source_guide_file_in_the_sources_package(guide: dict[str, str], tmp_path: Path) -> None:
    # the guide's "in inspectkit" route without touching the source tree: the file sits in a
    # folder on the package's path, and nothing imports it by name
    make_export(tmp_path / "line3", LINE3)
    folder = tmp_path / "sources"
    folder.mkdir()
    (folder / "csv_export.py").write_text(guide["source/csv_export.py"])
    extend = f"import inspectkit.sources\ninspectkit.sources.__path__.append({str(folder)!r})\n"
    result = last_json(run_python(extend + guide["source/usage.py"] + SOURCE_REPORT, cwd=tmp_path))
    check_source(result)
    assert result["module"] == "inspectkit.sources.csv_export"


def test_source_guide_installed_package_trains_from_the_command_line(
    guide: dict[str, str], tmp_path: Path
) -> None:
    site = install_package(
        tmp_path / "plugin",
        {
            "csv_export.py": guide["source/csv_export.py"],
            "pyproject.toml": guide["source/pyproject.toml"],
        },
    )
    make_export(tmp_path / "line3", LINE3)
    check_source(
        last_json(run_python(guide["source/usage.py"] + SOURCE_REPORT, paths=(site,), cwd=tmp_path))
    )
    (tmp_path / "spec.json").write_text(json.dumps(TINY_CLASSIFIER))
    cli = "import sys\nfrom inspectkit.cli import main\nraise SystemExit(main(sys.argv[1:]))"
    train = ["train", "--data", "line3", "--out", "model", "--spec", "spec.json", "--json", "-q"]
    card = last_json(run_python(cli, *train, paths=(site,), cwd=tmp_path))
    assert card["layout"] == "csv-export" and card["class_counts"] == {"ok": 4, "scratch": 4}
    proc = run_python(
        cli, "predict", "--model", "model", "line3", "--json", paths=(site,), cwd=tmp_path
    )
    rows = last_json(proc)["predictions"]
    assert [Path(r["input"]).name for r in rows] == [name for name, _ in LINE3]


# ---------------------------------------------------------------------- commands
CLI = "import sys\nfrom inspectkit.cli import main\nraise SystemExit(main(sys.argv[1:]))"

#: Help of the whole command and of the new command, then: was torch imported?
HELP = """
import json, sys
from inspectkit.cli import main
out = []
for argv in (["--help"], ["count", "--help"]):
    try:
        main(argv)
    except SystemExit as exc:
        out.append(exc.code)
print(json.dumps({"codes": out, "torch": "torch" in sys.modules}))
"""


@pytest.fixture(scope="module")
def installed_command(guide: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Path:
    return install_package(
        tmp_path_factory.mktemp("command-plugin"),
        {
            "ik_count.py": guide["command/ik_count.py"],
            "pyproject.toml": guide["command/pyproject.toml"],
        },
    )


def test_command_guide_installed_by_entry_point(
    guide: dict[str, str], installed_command: Path, tmp_path: Path
) -> None:
    make_tree(tmp_path / "line3", n=3)
    usage = guide["command/usage.sh"].split("#")[0].split()
    assert usage[:2] == ["inspectkit", "count"]
    result = last_json(run_python(CLI, *usage[1:], paths=(installed_command,), cwd=tmp_path))
    assert result == {"layout": "class-folders", "counts": {"ok": 3, "scratch": 3}}
    proc = run_python(
        CLI,
        "count",
        "--data",
        "line3",
        "--task",
        "anomaly",
        paths=(installed_command,),
        cwd=tmp_path,
    )
    assert proc.returncode == 0 and proc.stdout.split() == ["ok", "3", "scratch", "0"]
    helped = run_python(HELP, paths=(installed_command,), cwd=tmp_path)
    assert last_json(helped) == {"codes": [0, 0], "torch": False}
    assert "samples per class in a data folder" in helped.stdout
    # a user mistake inside the plugin's run is one line and exit code 2, like any command
    missing = run_python(CLI, "count", "--data", "nope", paths=(installed_command,), cwd=tmp_path)
    assert missing.returncode == 2 and missing.stderr.strip().count("\n") == 0
    assert "nope: no such file or folder" in missing.stderr


def test_command_guide_file_in_the_cli_package(guide: dict[str, str], tmp_path: Path) -> None:
    make_tree(tmp_path / "line3", n=2)
    folder = tmp_path / "cli"
    folder.mkdir()
    (folder / "count.py").write_text(guide["command/ik_count.py"])
    script = (
        f"import inspectkit.cli\ninspectkit.cli.__path__.append({str(folder)!r})\n"
        "from inspectkit.cli import main\n"
        "raise SystemExit(main(['count', '--data', 'line3', '--json']))"
    )
    result = last_json(run_python(script, cwd=tmp_path))
    assert result == {"layout": "class-folders", "counts": {"ok": 2, "scratch": 2}}


def test_a_broken_plugin_command_leaves_the_others_working(tmp_path: Path) -> None:
    site = install_package(
        tmp_path / "broken",
        {
            "pyproject.toml": """
                [build-system]
                requires = ["setuptools>=61"]
                build-backend = "setuptools.build_meta"

                [project]
                name = "broken-command"
                version = "0.1.0"

                [tool.setuptools]
                py-modules = []

                [project.entry-points."inspectkit.commands"]
                broken = "no_such_module:Broken"
            """
        },
    )
    proc = run_python(CLI, "spec-schema", "--indent", "0", paths=(site,), cwd=tmp_path)
    assert proc.returncode == 0 and json.loads(proc.stdout)["title"] == "inspectkit pipeline spec"
    assert "warning" in proc.stderr and "broken" in proc.stderr
