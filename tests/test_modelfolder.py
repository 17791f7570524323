"""Model folders a line can trust (issue #16): nothing a save does deletes a user's data,
kills never leave a broken or mixed model, tampered folders are refused with one clear
error, and the previous model can be put back."""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from _ballast_stage import Ballast, expected_block
from conftest import make_image_set
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import inspectkit as ik
from inspectkit import modelfolder
from inspectkit.errors import InspectkitError, PersistenceError
from inspectkit.stages import Wrangle

REPO = Path(__file__).resolve().parents[1]


def _pipe(seed: int = 0) -> ik.Pipeline:
    data = make_image_set(n=12, size=16)
    return ik.Pipeline([Wrangle(size=16), Ballast(seed=seed)]).fit(data)


def _seed(folder: Path) -> int:
    return ik.Pipeline.load(folder)["test_ballast"].config.seed


@pytest.fixture(scope="module")
def two_models() -> tuple[ik.Pipeline, ik.Pipeline]:
    return _pipe(1), _pipe(2)


def _listing(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


# ---------------------------------------------------------------------- data loss (1-4)
def test_a_project_folder_is_never_replaced(tmp_path: Path, two_models) -> None:
    # inspectkit train --data proj/data --spec proj/pipeline.json --out proj
    proj = tmp_path / "proj"
    (proj / "data" / "ok").mkdir(parents=True)
    (proj / "data" / "ok" / "part1.png").write_bytes(b"precious")
    (proj / "pipeline.json").write_text(json.dumps(two_models[0].spec()))
    with pytest.raises(PersistenceError, match="not part of the saved model"):
        two_models[0].save(proj)
    assert (proj / "data" / "ok" / "part1.png").read_bytes() == b"precious"
    assert _listing(tmp_path) == ["proj"]


def test_files_a_user_keeps_in_a_model_folder_survive_a_retrain(tmp_path: Path, two_models) -> None:
    model = tmp_path / "model"
    two_models[0].save(model)
    (model / "notes.txt").write_text("trained on lot 42")
    with pytest.raises(PersistenceError, match=r"notes\.txt"):
        two_models[1].save(model)
    assert (model / "notes.txt").read_text() == "trained on lot 42"
    assert _seed(model) == 1


def test_saving_through_a_symlink_keeps_the_link(tmp_path: Path, two_models) -> None:
    models = tmp_path / "models"
    two_models[0].save(models / "v1")
    (models / "current").symlink_to("v1")
    two_models[1].save(models / "current")
    assert (models / "current").is_symlink()
    assert _seed(models / "current") == 2
    assert _seed(models / "v1") == 2
    assert _listing(models) == ["current", "v1"]


def test_attachments_are_saved_and_read_in_the_same_unit(tmp_path: Path, two_models) -> None:
    model = tmp_path / "m"
    two_models[0].save(model, attachments={"inspectkit-model.json": '{"task": "classify"}'})
    back = ik.Pipeline.load(model)
    assert json.loads(back.attachments["inspectkit-model.json"]) == {"task": "classify"}
    (model / "inspectkit-model.json").write_text('{"task": "anomaly"}')
    with pytest.raises(PersistenceError, match="cannot be read safely"):
        ik.Pipeline.load(model)
    with pytest.raises(PersistenceError, match="overwrite a model file"):
        two_models[0].save(model, attachments={"pipeline.json": "{}"})
    with pytest.raises(PersistenceError, match="plain file name"):
        two_models[0].save(model, attachments={"../escape.json": "{}"})


def test_the_previous_model_is_kept_and_rolled_back(tmp_path: Path, two_models) -> None:
    model = tmp_path / "m"
    with pytest.raises(PersistenceError, match="no previous version"):
        two_models[0].save(model, keep=1) and ik.Pipeline.rollback(model)
    two_models[1].save(model, keep=1)
    assert _listing(tmp_path) == ["m", "m.prev"]
    assert _seed(model) == 2
    ik.Pipeline.rollback(model)
    assert _seed(model) == 1
    ik.Pipeline.rollback(model)  # a second rollback undoes the first
    assert _seed(model) == 2
    for _ in range(3):
        two_models[0].save(model, keep=2)
    assert _listing(tmp_path) == ["m", "m.prev", "m.prev-2"]


def test_leftovers_of_killed_saves_are_removed_by_the_next_save(tmp_path: Path, two_models) -> None:
    model = tmp_path / "m"
    two_models[0].save(model)
    for name in (".m.tmp-abc123", ".m.old-999"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "stage-01-test_ballast.pt").write_bytes(b"x" * 1000)
    (tmp_path / ".other.tmp-abc").mkdir()  # another model's: not ours to remove
    two_models[1].save(model)
    assert _listing(tmp_path) == [".other.tmp-abc", "m"]


def test_an_interrupted_portable_swap_is_undone(tmp_path: Path, two_models) -> None:
    """Where renameat2 is missing, a kill between the two renames left no model at all."""
    model = tmp_path / "m"
    two_models[0].save(model)
    # the state a kill leaves between "model -> old" and "tmp -> model"
    (tmp_path / ".m.swap").write_text(json.dumps({"old": ".m.old-1"}))
    os.rename(model, tmp_path / ".m.old-1")
    (tmp_path / ".m.tmp-xyz").mkdir()
    assert _seed(model) == 1  # readers get the old model
    two_models[1].save(model)  # the next save restores it first, then replaces it
    assert _seed(model) == 2
    assert _listing(tmp_path) == ["m"]


def test_portable_swap_path_works(tmp_path: Path, two_models, monkeypatch) -> None:
    monkeypatch.setattr(modelfolder, "renameat2_exchange", lambda a, b: False)
    model = tmp_path / "m"
    two_models[0].save(model)
    two_models[1].save(model, keep=1)
    assert _seed(model) == 2
    assert _seed(tmp_path / "m.prev") == 1
    ik.Pipeline.rollback(model)
    assert _seed(model) == 1
    assert _listing(tmp_path) == ["m", "m.prev"]


# ---------------------------------------------------------------------- foreign files (8)
@pytest.mark.parametrize(
    "state", ["../other/stage-01-test_ballast.pt", "/etc/passwd", "sub/x.pt", "..", ""]
)
def test_state_file_names_stay_inside_the_folder(tmp_path: Path, two_models, state: str) -> None:
    model = tmp_path / "m"
    two_models[0].save(model)
    two_models[1].save(tmp_path / "other")
    spec = json.loads((model / "pipeline.json").read_text())
    spec["stages"][1]["state"] = state
    (model / "pipeline.json").write_text(json.dumps(spec))
    with pytest.raises(PersistenceError, match="plain file name"):
        ik.Pipeline.load(model)


def test_a_symlinked_state_file_is_refused(tmp_path: Path, two_models) -> None:
    model = tmp_path / "m"
    two_models[0].save(model)
    two_models[1].save(tmp_path / "other")
    state = model / "stage-01-test_ballast.pt"
    state.unlink()
    state.symlink_to(tmp_path / "other" / "stage-01-test_ballast.pt")
    with pytest.raises(PersistenceError, match="symlink"):
        ik.Pipeline.load(model)


# ---------------------------------------------------------------------- tampering (12)
TAMPERED_SPECS = {
    "format_version text": lambda s: s.replace('"format_version": 2', '"format_version": "abc"'),
    "format_version null": lambda s: s.replace('"format_version": 2', '"format_version": null'),
    "format_version 1e400": lambda s: s.replace('"format_version": 2', '"format_version": 1e400'),
    "format_version true": lambda s: s.replace('"format_version": 2', '"format_version": true'),
    "5000 digits": lambda s: s.replace('"format_version": 2', '"format_version": ' + "9" * 5000),
    "deep nesting": lambda s: s.replace(
        '"stages"', '"deep": ' + "[" * 100_000 + "]" * 100_000 + ', "stages"'
    ),
    "NaN": lambda s: s.replace('"format_version": 2', '"format_version": NaN'),
    "version from the future": lambda s: s.replace('"format_version": 2', '"format_version": 99'),
    "library from the future": lambda s: s.replace(f'"{ik.__version__}"', '"99.0.0"'),
    "bad library version": lambda s: s.replace(f'"{ik.__version__}"', '"banana"'),
    "stages not a list": lambda s: json.dumps({**json.loads(s), "stages": {"a": 1}}),
    "no stages": lambda s: json.dumps({**json.loads(s), "stages": []}),
    "fitted text": lambda s: s.replace('"fitted": true', '"fitted": "yes"', 1),
    "config list": lambda s: s.replace('"config": {', '"config": [{', 1).replace(
        '},\n      "fitted"', '}],\n      "fitted"', 1
    ),
    "bad digest": lambda s: s.replace('"sha256": "', '"sha256": "zz', 1),
    "unknown stage": lambda s: s.replace('"name": "wrangle"', '"name": "no_such_stage"'),
    "bad setting": lambda s: s.replace('"numbers": 250000', '"numbers": -4'),
    "not an object": lambda s: "[1, 2, 3]",
    "empty": lambda s: "",
}


@pytest.mark.parametrize("case", sorted(TAMPERED_SPECS))
def test_tampered_specs_give_one_clear_error(tmp_path: Path, two_models, case: str) -> None:
    model = tmp_path / "m"
    two_models[0].save(model)
    spec_file = model / "pipeline.json"
    text = TAMPERED_SPECS[case](spec_file.read_text())
    assert text != spec_file.read_text() or case == "empty"
    spec_file.write_text(text)
    with pytest.raises(PersistenceError) as info:
        ik.Pipeline.load(model)
    assert "\n" not in str(info.value) and len(str(info.value)) < 700


def test_non_utf8_spec_is_refused(tmp_path: Path, two_models) -> None:
    model = tmp_path / "m"
    two_models[0].save(model)
    (model / "pipeline.json").write_bytes(b'{"format": "inspectkit.pipeline", "x": "\xff\xfe"}')
    with pytest.raises(PersistenceError, match="UTF-8"):
        ik.Pipeline.load(model)


@pytest.mark.parametrize(
    "payload", [{}, torch.zeros(3), [1, 2], {"block": "not numbers"}, {"block": torch.zeros(5)}]
)
def test_state_files_of_the_wrong_shape_are_refused(tmp_path: Path, two_models, payload) -> None:
    model = tmp_path / "m"
    two_models[0].save(model)
    state = model / "stage-01-test_ballast.pt"
    torch.save(payload, state)
    spec = json.loads((model / "pipeline.json").read_text())
    with open(state, "rb") as fh:
        spec["stages"][1]["sha256"] = modelfolder._sha256(fh)  # a consistent forgery
    (model / "pipeline.json").write_text(json.dumps(spec))
    with pytest.raises(PersistenceError, match=r"stage-01-test_ballast\.pt"):
        ik.Pipeline.load(model)


def test_a_full_disk_is_a_clear_error_and_keeps_the_old_model(tmp_path: Path, two_models) -> None:
    model = tmp_path / "m"
    two_models[0].save(model)
    before = {p.name: p.read_bytes() for p in model.iterdir()}
    script = textwrap.dedent(
        f"""
        import resource, signal, sys
        import inspectkit as ik
        import _ballast_stage
        from inspectkit.errors import PersistenceError
        pipe = ik.Pipeline.load({str(tmp_path / "m")!r})
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (20_000, 20_000))  # files over 20 kB fail (the state is 1 MB)
        try:
            pipe.save({str(model)!r})
        except PersistenceError as exc:
            print("REFUSED", exc)
            sys.exit(0)
        print("SAVED")
        """
    )
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parent)}
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, env=env
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.startswith("REFUSED") and "previous model is untouched" in out.stdout
    assert {p.name: p.read_bytes() for p in model.iterdir()} == before
    assert _listing(tmp_path) == ["m"]


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    raw=st.one_of(
        st.binary(max_size=300),
        st.recursive(
            st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
            lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=8), c, max_size=4),
            max_leaves=20,
        ).map(lambda v: json.dumps(v).encode()),
        st.fixed_dictionaries(
            {
                "format": st.just("inspectkit.pipeline"),
                "format_version": st.one_of(st.integers(-2, 4), st.text(max_size=3), st.none()),
                "stages": st.lists(
                    st.fixed_dictionaries(
                        {
                            "name": st.sampled_from(["wrangle", "classifier", "nope", ""]),
                            "config": st.dictionaries(
                                st.sampled_from(["size", "epochs", "lr", "x"]),
                                st.one_of(st.integers(-3, 5000), st.text(max_size=4)),
                                max_size=2,
                            ),
                            "fitted": st.one_of(st.booleans(), st.integers(0, 1)),
                            "state": st.sampled_from(
                                ["stage-00-wrangle.pt", "../x.pt", "pipeline.json", "s.pt"]
                            ),
                            "sha256": st.sampled_from(["0" * 64, "x"]),
                        }
                    ),
                    max_size=3,
                ),
            }
        ).map(lambda v: json.dumps(v).encode()),
    ),
    state=st.binary(max_size=200),
)
def test_random_folders_only_ever_give_persistence_errors(
    tmp_path_factory, raw: bytes, state: bytes
) -> None:
    folder = tmp_path_factory.mktemp("random")
    (folder / "pipeline.json").write_bytes(raw)
    for name in ("stage-00-wrangle.pt", "s.pt"):
        (folder / name).write_bytes(state)
    with contextlib.suppress(InspectkitError):
        ik.Pipeline.load(folder)


# ---------------------------------------------------------------------- kills and readers (3, 7)
SAVER = textwrap.dedent(
    """
    import sys, itertools
    import inspectkit as ik
    import _ballast_stage
    models = [ik.Pipeline.load(p) for p in sys.argv[1:3]]
    target = sys.argv[3]
    print("ready", flush=True)
    for i in itertools.count():
        models[i % 2].save(target, keep=int(sys.argv[4]))
    """
)


def _start_saver(tmp_path: Path, keep: int = 0) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).parent)}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-c",
            SAVER,
            str(tmp_path / "a"),
            str(tmp_path / "b"),
            str(tmp_path / "m"),
            str(keep),
        ],
        stdout=subprocess.PIPE,
        env=env,
    )
    assert proc.stdout is not None and proc.stdout.readline().strip() == b"ready"
    return proc


def _seed_of(folder: Path) -> int:
    stage = ik.Pipeline.load(folder)["test_ballast"]
    seed = stage.config.seed
    assert torch.equal(stage.block, EXPECTED[seed]), "spec of one save, state of another"
    return seed


EXPECTED = {1: expected_block(1), 2: expected_block(2)}


@pytest.mark.parametrize("portable", [False, True])
def test_killed_saves_leave_the_old_or_the_new_model(
    tmp_path: Path, two_models, portable: bool
) -> None:
    for name, pipe in zip("ab", two_models):
        pipe.save(tmp_path / name)
    two_models[0].save(tmp_path / "m")
    if portable:  # the saver runs without renameat2
        saver = SAVER.replace(
            "import inspectkit as ik",
            "import inspectkit as ik\nfrom inspectkit import modelfolder\n"
            "modelfolder.renameat2_exchange = lambda a, b: False",
        )
    rng = random.Random(0)
    kills = 16
    for _ in range(kills):
        if portable:
            env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).parent)}
            proc = subprocess.Popen(
                [sys.executable, "-c", saver, *(str(tmp_path / n) for n in ("a", "b", "m")), "1"],
                stdout=subprocess.PIPE,
                env=env,
            )
            assert proc.stdout is not None and proc.stdout.readline().strip() == b"ready"
        else:
            proc = _start_saver(tmp_path, keep=1)
        time.sleep(rng.uniform(0.0, 0.4))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        assert _seed_of(tmp_path / "m") in (1, 2)
    two_models[0].save(tmp_path / "m", keep=1)  # the next save cleans every leftover
    assert _seed_of(tmp_path / "m") == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "b", "m", "m.prev"]


def test_readers_never_see_one_save_s_spec_with_another_s_weights(
    tmp_path: Path, two_models
) -> None:
    for name, pipe in zip("ab", two_models):
        pipe.save(tmp_path / name)
    two_models[0].save(tmp_path / "m")
    proc = _start_saver(tmp_path)
    try:
        seen = {_seed_of(tmp_path / "m") for _ in range(150)}
    finally:
        proc.kill()
        proc.wait()
    assert seen <= {1, 2}
