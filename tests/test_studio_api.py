"""The studio's API through FastAPI's test client: projects, classes and uploads (names,
paths, sizes and bad images), background jobs (live epochs, one at a time, cancel,
records that outlive the page and the server), the test screen, the threshold, the
report and the downloads; plus the epoch observer the training loop calls, and a
``studio --help`` that imports neither torch nor FastAPI."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import threading
import time
import zipfile
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

pytest.importorskip("fastapi")
pytest.importorskip("multipart")
pytest.importorskip("httpx")  # the test client

from fastapi.testclient import TestClient

from inspectkit.cli import main as cli_main
from inspectkit.studio import create_app
from inspectkit.studio.jobs import JobRunner
from inspectkit.studio.safety import (
    IMAGE_SUFFIXES,
    Busy,
    UnsafeName,
    UploadLimits,
    check_name,
    inside,
    upload_name,
)

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "INSPECTKIT_PROGRESS": "0"}

TRAVERSALS = [
    "..",
    ".",
    "../etc",
    "a/b",
    "a\\b",
    "/etc",
    "C:",
    "x\x00y",
    "．．",  # full-width dots
    "／etc",  # full-width solidus
    "a\u2215b",  # division slash (NFKC keeps it, but it looks like one)
    "\u202egpj.exe",  # right-to-left override
    "a\u200bb",  # zero-width space
    ".studio",
    " padded",
    "con",
    "LPT1.txt",
    "",
    "x" * 65,
]


def png_bytes(side: int = 24, value: int = 128, noise: bool = False) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    if noise:  # does not compress: side² bytes
        Image.frombytes("L", (side, side), os.urandom(side * side)).save(buf, format="PNG")
    else:
        Image.new("L", (side, side), value).save(buf, format="PNG")
    return buf.getvalue()


def files(*items: tuple[str, bytes]) -> list[tuple[str, tuple[str, bytes, str]]]:
    return [("files", (name, data, "application/octet-stream")) for name, data in items]


@pytest.fixture
def client(tmp_path: Path) -> TestClient:
    app = create_app(tmp_path / "home", limits=UploadLimits(max_file_bytes=200_000))
    with TestClient(app) as c:
        yield c


def make_project(c: TestClient, name: str = "line3", task: str = "classify") -> None:
    r = c.post("/api/projects", json={"name": name, "task": task})
    assert r.status_code == 200, r.text


def neu_files(neu_det_dir: Path, cls: str, n: int, start: int = 1) -> list[tuple[str, bytes]]:
    paths = sorted((neu_det_dir / "IMAGES").glob(f"{cls}_*.jpg"))[start : start + n]
    return [(p.name, p.read_bytes()) for p in paths]


def wait_job(c: TestClient, project: str, job_id: str, timeout: float = 120) -> dict:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        job = c.get(f"/api/projects/{project}/jobs/{job_id}").json()
        if job["state"] in ("done", "failed", "cancelled", "interrupted"):
            return job
        time.sleep(0.05)
    raise AssertionError(f"job {job_id} did not finish: {job}")


# ---------------------------------------------------------------------- library hook
def test_observe_epochs_sees_every_epoch_and_an_exception_cancels() -> None:
    import torch

    from inspectkit.models import build_classifier, train_epochs
    from inspectkit.runtime import observe_epochs

    torch.manual_seed(0)
    x, y = torch.rand(16, 1, 16, 16), torch.arange(16) % 2
    batches = [(x[:8], y[:8]), (x[8:], y[8:])]
    seen: list[tuple[dict, int]] = []
    with observe_epochs(lambda entry, epochs: seen.append((entry, epochs))):
        result = train_epochs(
            build_classifier("compact", 1, 2, input_size=(16, 16), max_params=5_000),
            batches,
            epochs=3,
            progress=False,
        )
    assert [e["epoch"] for e, _ in seen] == [0.0, 1.0, 2.0]
    assert {n for _, n in seen} == {3}
    assert [e["loss"] for e, _ in seen] == [h["loss"] for h in result.history]

    class Stop(Exception):
        pass

    def stop_after_one(entry: dict, epochs: int) -> None:
        raise Stop

    with pytest.raises(Stop), observe_epochs(stop_after_one):
        train_epochs(
            build_classifier("compact", 1, 2, input_size=(16, 16), max_params=5_000),
            batches,
            epochs=5,
            progress=False,
        )
    # outside the context nothing is observed any more
    train_epochs(
        build_classifier("compact", 1, 2, input_size=(16, 16), max_params=5_000),
        batches,
        epochs=1,
        progress=False,
    )
    assert len(seen) == 3


# ---------------------------------------------------------------------- names and paths
@pytest.mark.parametrize("name", TRAVERSALS)
def test_unsafe_names_are_refused(name: str, tmp_path: Path) -> None:
    with pytest.raises(UnsafeName):
        check_name(name)
    with pytest.raises(UnsafeName):
        inside(tmp_path, name)


@given(st.text(min_size=0, max_size=80))
@settings(max_examples=300, deadline=None)
def test_an_accepted_name_is_one_component_inside_its_folder(text: str) -> None:
    root = Path("/srv/projects")
    try:
        name = check_name(text)
    except UnsafeName:
        return
    path = inside(root, name)
    assert path.parent == root.resolve()
    assert path.name == name
    assert "/" not in name and "\\" not in name and "\x00" not in name


@given(st.text(max_size=120), st.sampled_from([*IMAGE_SUFFIXES, ".PNG", ".exe", ".txt", ""]))
@settings(max_examples=300, deadline=None)
def test_upload_names_keep_only_a_safe_image_name(stem: str, suffix: str) -> None:
    try:
        name = upload_name(stem + suffix)
    except UnsafeName:
        assert suffix.lower() not in IMAGE_SUFFIXES or True
        return
    assert name == check_name(name)
    assert Path(name).suffix in IMAGE_SUFFIXES
    assert not any(c in name for c in "/\\\x00")


def test_upload_names_from_paths_keep_the_last_component() -> None:
    assert upload_name("../../etc/evil.png") == "evil.png"
    assert upload_name("C:\\Users\\me\\part 7.JPG") == "part 7.jpg"
    assert upload_name("con.png") == "image-con.png"
    for bad in ("evil.exe", "noext", "x.png.sh"):
        with pytest.raises(UnsafeName, match="not an image file type"):
            upload_name(bad)


# ---------------------------------------------------------------------- projects, classes
def test_projects_are_created_listed_and_refused_when_unsafe(client: TestClient) -> None:
    make_project(client, "line3", "classify")
    make_project(client, "tiles", "anomaly")
    listed = {p["name"]: p for p in client.get("/api/projects").json()["projects"]}
    assert listed["line3"]["task"] == "classify" and listed["tiles"]["task"] == "anomaly"
    # a good-only project starts with the class its detector learns from
    assert [c["name"] for c in client.get("/api/projects/tiles").json()["classes"]] == ["good"]
    again = client.post("/api/projects", json={"name": "line3", "task": "classify"})
    assert again.status_code == 400 and "already exists" in again.json()["error"]
    for bad in ("../x", "a/b", ".studio", "x\x00"):
        r = client.post("/api/projects", json={"name": bad, "task": "classify"})
        assert r.status_code == 400, bad
    assert client.post("/api/projects", json={"name": "p", "task": "segment"}).status_code == 400
    assert client.get("/api/projects/nope").status_code == 404
    assert client.get("/api/projects/..%2F..%2Fetc").status_code in (400, 404)


def test_classes_add_rename_delete_and_show_the_imbalance(client: TestClient) -> None:
    make_project(client)
    for cls in ("scratch", "dent", "good"):
        assert client.post("/api/projects/line3/classes", json={"name": cls}).status_code == 200
    up = lambda cls, n: client.post(  # noqa: E731
        f"/api/projects/line3/classes/{cls}/images",
        files=files(*[(f"{cls}{i}.png", png_bytes(value=i)) for i in range(n)]),
    )
    up("scratch", 8), up("dent", 1), up("good", 8)
    info = client.get("/api/projects/line3").json()
    counts = {c["name"]: c["images"] for c in info["classes"]}
    assert counts == {"dent": 1, "good": 8, "scratch": 8}
    assert info["balance"] == {"ratio": 8.0, "smallest": ["dent"]}
    r = client.patch("/api/projects/line3/classes/dent", json={"name": "dents"})
    assert (
        r.status_code == 200
        and (client.app.state.studio.workspace.home / "line3/data/dents").is_dir()
    )
    assert (
        client.patch("/api/projects/line3/classes/dents", json={"name": "../x"}).status_code == 400
    )
    assert (
        client.patch("/api/projects/line3/classes/dents", json={"name": "good"}).status_code == 400
    )
    assert client.post("/api/projects/line3/classes", json={"name": "a/b"}).status_code == 400
    assert client.delete("/api/projects/line3/classes/dents").status_code == 200
    assert [c["name"] for c in client.get("/api/projects/line3").json()["classes"]] == [
        "good",
        "scratch",
    ]
    for bad in ("..", "%2E%2E", "..%2F..%2Fline3"):
        assert client.delete(f"/api/projects/line3/classes/{bad}").status_code in (400, 404, 405)
    assert (client.app.state.studio.workspace.home / "line3/data/good").is_dir()


# ---------------------------------------------------------------------- uploads
def test_uploads_are_checked_decoded_and_kept_inside_their_class(
    client: TestClient, tmp_path: Path
) -> None:
    make_project(client)
    client.post("/api/projects/line3/classes", json={"name": "scratch"})
    good = png_bytes()
    r = client.post(
        "/api/projects/line3/classes/scratch/images",
        files=files(
            ("../../../evil.png", good),
            ("..\\..\\win.png", good),
            ("/etc/abs.png", good),
            ("evil.png", good),  # the same name again: stored under a new one
            ("notes.txt", b"hello"),
            ("broken.png", b"\x89PNG\r\n\x1a\n" + b"\x00" * 40),
            ("huge.png", png_bytes(side=600, noise=True)),  # valid, over the 200 kB limit
        ),
    )
    assert r.status_code == 200
    results = {row["file"]: row for row in r.json()["results"]}
    assert results["../../../evil.png"]["saved"] == "evil.png"
    assert results["..\\..\\win.png"]["saved"] == "win.png"
    assert results["/etc/abs.png"]["saved"] == "abs.png"
    assert results["evil.png"]["saved"] == "evil-2.png"
    assert "not an image file type" in results["notes.txt"]["error"]
    assert results["broken.png"]["error"].startswith("broken.png: ")
    assert ".studio" not in results["broken.png"]["error"]  # no server path on screen
    assert "over the limit" in results["huge.png"]["error"]
    home = client.app.state.studio.workspace.home
    stored = sorted(p.name for p in (home / "line3/data/scratch").iterdir())
    assert stored == ["abs.png", "evil-2.png", "evil.png", "win.png"]
    assert not (home / "evil.png").exists() and not (home / "line3/evil.png").exists()
    assert list((home / "line3/.studio/tmp").iterdir()) == []  # scratch copies removed
    # thumbnails and deletion go through the same names
    thumb = client.get("/api/projects/line3/thumbs/data/scratch/evil.png")
    assert thumb.status_code == 200 and thumb.content.startswith(b"\x89PNG")
    for bad in ("..%2F..%2Fpipeline.json", "..", "%2Fetc%2Fpasswd"):
        assert client.get(f"/api/projects/line3/thumbs/data/scratch/{bad}").status_code in (
            400,
            404,
        )
    assert client.get("/api/projects/line3/thumbs/models/scratch/evil.png").status_code == 404
    assert client.delete("/api/projects/line3/classes/scratch/images/evil.png").status_code == 200
    assert not (home / "line3/data/scratch/evil.png").exists()


def test_a_symlinked_class_or_image_is_not_followed(client: TestClient, tmp_path: Path) -> None:
    make_project(client)
    home = client.app.state.studio.workspace.home
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.png").write_bytes(png_bytes())
    (home / "line3/data/linked").symlink_to(outside, target_is_directory=True)
    client.post("/api/projects/line3/classes", json={"name": "real"})
    (home / "line3/data/real/secret.png").symlink_to(outside / "secret.png")
    r = client.post(
        "/api/projects/line3/classes/linked/images", files=files(("a.png", png_bytes()))
    )
    assert r.status_code == 400 and "link" in r.json()["error"]
    assert client.get("/api/projects/line3/thumbs/data/real/secret.png").status_code in (400, 404)
    assert client.get("/api/projects/line3/classes/real/images").json()["images"] == []
    assert [c["name"] for c in client.get("/api/projects/line3").json()["classes"]] == ["real"]
    assert list(outside.iterdir()) == [outside / "secret.png"]


def test_a_request_over_the_body_limit_gets_413(tmp_path: Path) -> None:
    app = create_app(tmp_path / "home", limits=UploadLimits(max_request_bytes=50_000))
    with TestClient(app) as c:
        make_project(c)
        c.post("/api/projects/line3/classes", json={"name": "a"})
        big = [(f"{i}.png", os.urandom(20_000)) for i in range(4)]
        r = c.post("/api/projects/line3/classes/a/images", files=files(*big))
        assert r.status_code == 413 and "limit" in r.json()["error"]
        assert c.get("/api/projects/line3/classes/a/images").json()["images"] == []


def test_requests_from_other_sites_and_hosts_are_refused(tmp_path: Path) -> None:
    app = create_app(tmp_path / "home", allowed_hosts={"127.0.0.1:8765"})
    with TestClient(app, base_url="http://127.0.0.1:8765") as c:
        ok = c.post("/api/projects", json={"name": "p", "task": "classify"})
        assert ok.status_code == 200
        evil = c.post(
            "/api/projects",
            json={"name": "q", "task": "classify"},
            headers={"Origin": "http://evil.example"},
        )
        assert evil.status_code == 403
        same = c.post(
            "/api/projects",
            json={"name": "q", "task": "classify"},
            headers={"Origin": "http://127.0.0.1:8765"},
        )
        assert same.status_code == 200
        rebound = c.get("/api/projects", headers={"Host": "attacker.example:8765"})
        assert rebound.status_code == 403
    page = TestClient(create_app(tmp_path / "h2")).get("/")
    assert page.status_code == 200 and "studio.js" in page.text
    csp = page.headers["content-security-policy"]
    assert "default-src 'self'" in csp and "http" not in csp  # nothing from the network


def test_the_page_ships_every_asset_it_uses() -> None:
    static = Path(__file__).resolve().parents[1] / "src/inspectkit/studio/static"
    text = "".join(p.read_text() for p in static.iterdir() if p.suffix in (".html", ".css", ".js"))
    assert "http://" not in text and "https://" not in text and "//cdn" not in text
    assert "@import" not in text and "@font-face" not in text
    for ref in ("/static/studio.css", "/static/studio.js", "/static/icon.svg"):
        assert (static / ref.rsplit("/", 1)[1]).is_file()


# ---------------------------------------------------------------------- jobs
def test_one_job_at_a_time_cancel_and_records_that_outlive_the_server(tmp_path: Path) -> None:
    runner = JobRunner(tmp_path)
    elsewhere = JobRunner(tmp_path)  # another studio process on the same folder, opened first
    release = threading.Event()

    def slow(ctx):
        ctx.phase("working")
        for epoch in range(1000):
            if release.wait(0.01):
                return {"epochs": epoch}
            ctx.epoch({"epoch": epoch, "loss": 1.0 / (epoch + 1)}, 1000)
        return {}

    job = runner.start("train", {"epochs": 1000}, slow)
    with pytest.raises(Busy, match="already running"):
        runner.start("train", {}, slow)
    while len(job.history) < 3:
        time.sleep(0.01)
    saved = json.loads((tmp_path / ".studio/jobs" / f"{job.id}.json").read_text())
    assert saved["state"] in ("running", "cancelling") and len(saved["history"]) >= 1
    # a second studio on the same folder sees the job running and cannot start another
    other = JobRunner(tmp_path)
    assert other.get(job.id).state == "running"
    with pytest.raises(Busy, match="already running"):
        other.start("train", {}, slow)
    with pytest.raises(Busy, match="another studio"):  # it knew nothing of the job
        elsewhere.start("train", {}, slow)
    runner.cancel(job.id)
    runner.join(10)
    assert runner.get(job.id).state == "cancelled"
    assert json.loads((tmp_path / ".studio/jobs" / f"{job.id}.json").read_text())["state"] == (
        "cancelled"
    )
    # after it, another one may start, and a failure is one line
    job2 = runner.start("generate", {}, lambda ctx: {"n": 1})
    runner.join(10)
    assert runner.get(job2.id).state == "done" and runner.get(job2.id).result == {"n": 1}

    def broken(ctx):
        raise RuntimeError("boom\nsecond line")

    job3 = runner.start("train", {}, broken)
    runner.join(10)
    assert runner.get(job3.id).error == "internal error: RuntimeError: boom second line"
    release.set()
    # a record left running by a studio that stopped (no process holds the job lock) is
    # shown as interrupted when the folder is opened again
    record = json.loads((tmp_path / ".studio/jobs" / f"{job3.id}.json").read_text())
    record.update(state="running", id="20000101-000000-dead00")
    (tmp_path / ".studio/jobs/20000101-000000-dead00.json").write_text(json.dumps(record))
    again = JobRunner(tmp_path).get("20000101-000000-dead00")
    assert again.state == "interrupted" and "stopped" in again.error


@pytest.mark.realdata
def test_classify_flow_on_neu_images(
    client: TestClient, neu_det_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    make_project(client)
    for cls in ("crazing", "inclusion", "scratches"):
        client.post("/api/projects/line3/classes", json={"name": cls})
        r = client.post(
            f"/api/projects/line3/classes/{cls}/images",
            files=files(*neu_files(neu_det_dir, cls, 10)),
        )
        assert all("saved" in row for row in r.json()["results"])
    bad = client.post("/api/projects/line3/train", json={"epochs": "many"})
    assert bad.status_code == 400 and "epochs" in bad.json()["error"]
    bad = client.post("/api/projects/line3/train", json={"lr": 5})
    assert bad.status_code == 400 and "lr" in bad.json()["error"]
    job = client.post("/api/projects/line3/train", json={"epochs": 2, "size": 32}).json()
    refused = client.post("/api/projects/line3/train", json={"epochs": 2})
    assert refused.status_code == 409 and "already running" in refused.json()["error"]
    states, losses = [], []
    with client.stream("GET", f"/api/projects/line3/jobs/{job['id']}/events") as events:
        for line in events.iter_lines():
            if line.startswith("data: "):
                event = json.loads(line[6:])
                states.append(event["state"])
                losses.append(len(event["history"]))
    assert states[-1] == "done", states
    assert losses == sorted(losses) and losses[-1] == 2  # epochs arrive one by one
    done = client.get(f"/api/projects/line3/jobs/{job['id']}").json()
    assert done["result"]["held_out"] == 6 and done["result"]["trained_on"] == 24
    assert 0 <= done["result"]["metrics"]["accuracy"] <= 1
    home = client.app.state.studio.workspace.home
    card = json.loads((home / "line3/models/model/inspectkit-model.json").read_text())
    assert card["task"] == "classify" and card["samples"] == 24
    # generated images train the next model and are never scored
    gen = client.post(
        "/api/projects/line3/generate", json={"class": "crazing", "method": "augment", "count": 4}
    ).json()
    gen = wait_job(client, "line3", gen["id"])
    assert gen["state"] == "done" and gen["result"]["generated"] == 4
    listed = client.get("/api/projects/line3/classes/crazing/images?area=generated").json()
    assert len(listed["images"]) == 4
    job = client.post("/api/projects/line3/train", json={"epochs": 2, "size": 32}).json()
    done = wait_job(client, "line3", job["id"])
    assert done["result"]["trained_on"] == 28 and done["result"]["held_out"] == 6
    assert (home / "line3/models/model.prev/pipeline.json").is_file()  # previous kept
    # test screen: bars per class, a Grad-CAM overlay on request, a bad file as a message
    test = neu_files(neu_det_dir, "scratches", 2, start=200)
    r = client.post(
        "/api/projects/line3/predict",
        files=files(*test, ("bad.png", b"not a png")),
        data={"explain": "gradcam"},
    )
    rows = r.json()["results"]
    assert [row["input"] for row in rows] == [test[0][0], test[1][0], "bad.png"]
    for row in rows[:2]:
        assert set(row["probs"]) == {"crazing", "inclusion", "scratches"}
        assert abs(sum(row["probs"].values()) - 1) < 1e-3
        assert row["overlay"].startswith("data:image/png;base64,")
    assert rows[2]["error"].startswith("bad.png: ") and "Traceback" not in rows[2]["error"]
    # the report of `inspectkit evaluate` on the held-out images
    ev = wait_job(client, "line3", client.post("/api/projects/line3/evaluate").json()["id"])
    assert ev["state"] == "done" and ev["result"]["scored"] == 6
    assert (home / "line3/split.json").is_file()  # the command line's stored split
    # ... the same figures as `inspectkit evaluate --project` on the same folder
    capsys.readouterr()
    assert cli_main(["evaluate", "--project", str(home / "line3"), "--json", "--quiet"]) == 0
    from_cli = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert from_cli["metrics"] == pytest.approx(ev["result"]["metrics"])
    assert from_cli["counts"]["total"] == 6
    report = client.get("/api/projects/line3/report")
    assert report.status_code == 200 and "<html" in report.text.lower()
    assert "script-src" not in report.headers["content-security-policy"]
    # downloads: the model folder, and the project's four folders
    model = zipfile.ZipFile(io.BytesIO(client.get("/api/projects/line3/model/download").content))
    assert "model/pipeline.json" in model.namelist()
    project = zipfile.ZipFile(io.BytesIO(client.get("/api/projects/line3/download").content))
    tops = {n.split("/")[1] for n in project.namelist()}
    assert tops == {"data", "generated", "models", "reports"}
    assert not any(".studio" in n for n in project.namelist())
    # ONNX: offered exactly when the library can export here
    from inspectkit.studio.work import onnx_available

    assert client.get("/api/info").json()["onnx"] is onnx_available()
    onnx = client.get("/api/projects/line3/model/onnx")
    if onnx_available():
        names = zipfile.ZipFile(io.BytesIO(onnx.content)).namelist()
        assert {"model-onnx/model.onnx", "model-onnx/model.json"} <= set(names)
    else:
        assert onnx.status_code == 400 and "ONNX" in onnx.json()["error"]


@pytest.mark.realdata
def test_anomaly_flow_on_magnetic_tiles(client: TestClient, magnetic_tile_dir: Path) -> None:
    make_project(client, "tiles", "anomaly")
    free = sorted((magnetic_tile_dir / "MT_Free/Imgs").glob("*.jpg"))[:10]
    crack = sorted((magnetic_tile_dir / "MT_Crack/Imgs").glob("*.jpg"))[:3]
    client.post(
        "/api/projects/tiles/classes/good/images",
        files=files(*[(p.name, p.read_bytes()) for p in free]),
    )
    client.post("/api/projects/tiles/classes", json={"name": "crack"})
    client.post(
        "/api/projects/tiles/classes/crack/images",
        files=files(*[(p.name, p.read_bytes()) for p in crack]),
    )
    assert client.post("/api/projects/tiles/train", json={"epochs": 2}).status_code == 400
    job = client.post("/api/projects/tiles/train", json={"size": 64}).json()
    done = wait_job(client, "tiles", job["id"], timeout=300)
    assert done["state"] == "done", done
    assert done["result"]["trained_on"] == 8  # the good images less the held-out fifth
    assert done["result"]["held_out"] == 5  # 2 good + every crack
    r = client.post(
        "/api/projects/tiles/predict", files=files((crack[0].name, crack[0].read_bytes()))
    )
    row = r.json()["results"][0]
    assert isinstance(row["anomalous"], bool) and row["overlay"].startswith("data:image/png")
    # the test screen asks for the threshold view and a prediction at once: both answer
    # (the library's feature tracing is not thread-safe; the studio takes turns)
    answers: dict[str, object] = {}

    def ask(key: str, call) -> None:
        answers[key] = call()

    threads = [
        threading.Thread(
            target=ask, args=("view", lambda: client.get("/api/projects/tiles/threshold"))
        ),
        threading.Thread(
            target=ask,
            args=(
                "predict",
                lambda: client.post(
                    "/api/projects/tiles/predict",
                    files=files((crack[1].name, crack[1].read_bytes())),
                ),
            ),
        ),
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert answers["predict"].status_code == 200, answers["predict"].text  # type: ignore[attr-defined]
    view = answers["view"].json()  # type: ignore[attr-defined]
    assert len(view["good"]) == 2 and len(view["defect"]) == 3
    assert view["threshold"] is not None and view["can_save"]
    # a threshold moved on screen is saved through the stage as a new model version
    chosen = min(view["defect"]) - 1e-6
    bad = client.post("/api/projects/tiles/threshold", json={"threshold": "high"})
    assert bad.status_code == 400
    saved = client.post("/api/projects/tiles/threshold", json={"threshold": chosen})
    assert saved.status_code == 200, saved.text
    assert saved.json()["threshold"] == pytest.approx(chosen)
    home = client.app.state.studio.workspace.home
    assert (home / "tiles/models/model.prev/pipeline.json").is_file()
    from inspectkit.pipeline import Pipeline

    stage = Pipeline.load(home / "tiles/models/model").stages[-1]
    assert stage.threshold == pytest.approx(chosen) and stage.config.threshold == pytest.approx(
        chosen
    )
    trained = Pipeline.load(home / "tiles/models/model.prev").stages[-1].calibration
    assert trained.region_threshold is not None  # set on the held-out goods' maps
    assert (stage.calibration.region_threshold, stage.calibration.region_false_alarm_rate) == (
        trained.region_threshold,
        trained.region_false_alarm_rate,
    )  # moving the threshold keeps where regions end
    after = client.get("/api/projects/tiles/threshold").json()
    assert after["threshold"] == pytest.approx(chosen)
    assert after["review_threshold"] is None
    assert all(score > chosen for score in after["defect"])  # no crack missed any more
    # where defect regions end: offered as shares of good pixels, set on the held-out goods
    assert after["region_rate"] == 0.001 and 0.001 in after["region_rates"]
    for refused in (
        {"threshold": chosen, "region_rate": 0.5},
        {"threshold": chosen, "region_rate": "x"},
    ):
        r = client.post("/api/projects/tiles/threshold", json=refused)
        assert r.status_code == 400 and "region rate" in r.json()["error"], r.text
    wider = client.post(
        "/api/projects/tiles/threshold", json={"threshold": chosen, "region_rate": 0.01}
    )
    assert wider.status_code == 200 and wider.json()["region_rate"] == 0.01, wider.text
    stage = Pipeline.load(home / "tiles/models/model").stages[-1]
    assert stage.config.region_false_alarm_rate == 0.01 == stage.calibration.region_false_alarm_rate
    assert stage.calibration.region_threshold != trained.region_threshold
    assert stage.threshold == pytest.approx(chosen)
    # a review band below it: saved into the stage's settings and calibration, so the
    # parts between the two lines get the verdict "review"
    high, low = max(view["defect"]) + 1.0, min(view["good"]) - 1.0
    for refused in (
        {"threshold": low, "review_threshold": high},
        {"threshold": high, "review_threshold": "x"},
    ):
        r = client.post("/api/projects/tiles/threshold", json=refused)
        assert r.status_code == 400 and "review threshold" in r.json()["error"]
    banded = client.post(
        "/api/projects/tiles/threshold", json={"threshold": high, "review_threshold": low}
    )
    assert banded.status_code == 200, banded.text
    assert banded.json() == pytest.approx(
        {"threshold": high, "review_threshold": low, "region_rate": 0.01}
    )  # the region line chosen before is kept
    stage = Pipeline.load(home / "tiles/models/model").stages[-1]
    assert stage.config.review_threshold == pytest.approx(low)
    assert stage.calibration.review_threshold == pytest.approx(low)
    assert client.get("/api/projects/tiles/threshold").json()["review_threshold"] == pytest.approx(
        low
    )
    row = client.post(
        "/api/projects/tiles/predict", files=files((crack[0].name, crack[0].read_bytes()))
    ).json()["results"][0]
    assert row["anomalous"] is False and row["review"] is True
    # saved without one, the band is gone
    plain = client.post("/api/projects/tiles/threshold", json={"threshold": high})
    assert plain.json()["review_threshold"] is None
    assert (
        Pipeline.load(home / "tiles/models/model").stages[-1].calibration.review_threshold is None
    )


# ---------------------------------------------------------------------- command line
STUDIO_HELP = """
import json, sys
from inspectkit.cli import main
try:
    main(["studio", "--help"])
except SystemExit as exc:
    code = exc.code
print(json.dumps({"code": code, "heavy": sorted(m for m in ("torch", "fastapi", "uvicorn", "numpy")
                                                if m in sys.modules)}))
"""


def test_studio_help_imports_neither_torch_nor_fastapi() -> None:
    proc = subprocess.run(
        [sys.executable, "-c", STUDIO_HELP], capture_output=True, text=True, env=ENV, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result == {"code": 0, "heavy": []}
    assert "--project" in proc.stdout and "127.0.0.1" in proc.stdout


def test_studio_command_refuses_bad_arguments_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from inspectkit.cli.studio import allowed_hosts

    (tmp_path / "file").write_text("x")
    assert cli_main(["studio", "--project", str(tmp_path / "file")]) == 2
    assert "not a folder" in capsys.readouterr().err
    assert cli_main(["studio", "--port", "70000"]) == 2
    assert "--port" in capsys.readouterr().err
    assert allowed_hosts("127.0.0.1", 8765) >= {"127.0.0.1:8765", "localhost:8765"}
    assert allowed_hosts("0.0.0.0", 8765) is None  # on a network address any Host is served


def test_inspectkit_studio_serves_the_project_on_loopback(tmp_path: Path) -> None:
    import socket
    import urllib.request

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [sys.executable, "-m", "inspectkit.cli", "studio", "--project", str(tmp_path / "line3"),
         "--port", str(port)],
        env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        info = None
        end = time.monotonic() + 60
        while info is None and time.monotonic() < end and proc.poll() is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/info", timeout=2) as r:
                    info = json.loads(r.read())
            except OSError:
                time.sleep(0.2)
        assert info is not None, proc.stdout.read() if proc.poll() is not None else "no answer"
        assert info["start"] == "line3" and info["home"] == str(tmp_path.resolve())
    finally:
        proc.terminate()
        out = proc.communicate(timeout=20)[0]
    assert f"http://127.0.0.1:{port}/" in out
