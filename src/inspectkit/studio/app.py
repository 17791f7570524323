"""The studio's web server: a FastAPI app over a folder of projects.

``create_app(home)`` serves the page (``static/``: plain HTML, CSS and JS shipped in the
package, nothing from the network) and a JSON API under ``/api``. Requests that change
something must come from the studio's own page (an ``Origin`` of another site is
refused), bodies are capped while they arrive (:class:`BodyLimit`, 413), the ``Host``
must be one the server was started for, and every name in a URL goes through
:mod:`inspectkit.studio.safety`. A library error is a JSON ``{"error": "..."}`` with
status 400 (or the :class:`StudioError`'s own), never a traceback.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse, Response, StreamingResponse
from fastapi.staticfiles import StaticFiles
from starlette.background import BackgroundTask
from starlette.datastructures import UploadFile
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from inspectkit._version import __version__
from inspectkit.errors import InspectkitError
from inspectkit.studio import work
from inspectkit.studio.jobs import FINISHED, JobRunner
from inspectkit.studio.safety import (
    IMAGE_SUFFIXES,
    StudioError,
    TooLarge,
    UploadLimits,
    check_name,
    upload_name,
)
from inspectkit.studio.workspace import TASKS, StudioProject, Workspace

log = logging.getLogger(__name__)

STATIC = Path(__file__).parent / "static"
#: Content-Security-Policy of the studio's page: its own files only.
PAGE_CSP = (
    "default-src 'self'; img-src 'self' data: blob:; style-src 'self'; script-src 'self'; "
    "connect-src 'self'; frame-src 'self'; object-src 'none'; base-uri 'none'"
)
#: Content-Security-Policy of a served HTML report: inline styles and images, no scripts.
REPORT_CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"
#: Seconds between keep-alive comments on an event stream.
EVENT_HEARTBEAT = 5.0


class BodyLimit:
    """ASGI middleware: a request body over ``limit`` bytes gets 413 (from its
    ``Content-Length`` at once, else when the streamed bytes pass the limit)."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        length = headers.get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.limit:
            await _refuse(send, 413, self._message())
            return
        seen = 0
        started = False

        async def limited() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    raise TooLarge(self._message())
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, limited, tracking_send)
        except TooLarge as exc:
            if not started:
                await _refuse(send, 413, str(exc))

    def _message(self) -> str:
        return f"the upload is over the limit of {self.limit / 2**20:.0f} MiB per request"


class LocalOnly:
    """ASGI middleware: only the hosts the server runs as (no DNS rebinding), and requests
    that change state only from the studio's own page (no cross-site form posts)."""

    def __init__(self, app: ASGIApp, hosts: set[str] | None) -> None:
        self.app = app
        self.hosts = hosts

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        host = headers.get("host", "")
        if self.hosts is not None and host not in self.hosts:
            await _refuse(send, 403, f"host {host!r} is not this studio")
            return
        origin = headers.get("origin")
        unsafe = scope["method"] not in ("GET", "HEAD", "OPTIONS")
        if unsafe and origin is not None and urlsplit(origin).netloc != host:
            await _refuse(send, 403, "requests from other sites are refused")
            return
        await self.app(scope, receive, send)


async def _refuse(send: Send, status: int, text: str) -> None:
    body = json.dumps({"error": text}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/json"), (b"connection", b"close")],
        }
    )
    await send({"type": "http.response.body", "body": body})


class Studio:
    """The state behind the app: the workspace and one job runner per project."""

    def __init__(self, home: Path, limits: UploadLimits, start: str | None) -> None:
        self.workspace = Workspace(home)
        self.limits = limits
        self.start = start
        self._runners: dict[Path, JobRunner] = {}
        self._lock = threading.Lock()  # requests run on a thread pool

    def project(self, name: str) -> StudioProject:
        return self.workspace.open(name)

    def runner(self, project: StudioProject) -> JobRunner:
        """The one job runner of ``project`` in this process."""
        with self._lock:
            runner = self._runners.get(project.root)
            if runner is None:
                runner = self._runners[project.root] = JobRunner(project.root)
                project.clean_scratch()
            return runner


def create_app(
    home: str | Path,
    *,
    limits: UploadLimits | None = None,
    start_project: str | None = None,
    allowed_hosts: set[str] | None = None,
) -> FastAPI:
    """The studio app over the projects in ``home``.

    Args:
        home: Folder whose sub-folders are projects (created when missing).
        limits: Upload limits (default :class:`UploadLimits`).
        start_project: Project the page opens first (``inspectkit studio --project``).
        allowed_hosts: ``Host`` headers accepted (``None``: any, for test clients).
    """
    home = Path(home)
    home.mkdir(parents=True, exist_ok=True)
    limits = limits or UploadLimits()
    studio = Studio(home, limits, start_project)
    app = FastAPI(title="inspectkit studio", version=__version__, docs_url=None, redoc_url=None)
    app.state.studio = studio

    @app.exception_handler(InspectkitError)
    async def _library_error(request: Request, exc: InspectkitError) -> JSONResponse:
        status = exc.status if isinstance(exc, StudioError) else 400
        return JSONResponse({"error": " ".join(str(exc).split())}, status_code=status)

    @app.exception_handler(OSError)
    async def _os_error(request: Request, exc: OSError) -> JSONResponse:
        return JSONResponse({"error": f"file system: {exc.strerror or exc}"}, status_code=400)

    @app.middleware("http")
    async def _headers(request: Request, call_next: Any) -> Response:
        response = await call_next(request)
        response.headers.setdefault("Content-Security-Policy", PAGE_CSP)
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        response.headers.setdefault("Referrer-Policy", "no-referrer")
        response.headers.setdefault("Cache-Control", "no-store")
        return response

    _routes(app, studio)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    app.add_middleware(BodyLimit, limit=limits.max_request_bytes)
    app.add_middleware(LocalOnly, hosts=allowed_hosts)
    return app


def _routes(app: FastAPI, studio: Studio) -> None:
    limits = studio.limits

    @app.get("/", include_in_schema=False)
    def index() -> FileResponse:
        return FileResponse(STATIC / "index.html", media_type="text/html")

    @app.get("/api/info")
    def info() -> dict[str, Any]:
        from inspectkit.anomaly import available_detectors
        from inspectkit.anomaly.stage import AnomalyDetector
        from inspectkit.models.features import available_backbones
        from inspectkit.recipes import CLASSIFY_SIZE, EPOCHS
        from inspectkit.xai import available_methods

        cfg = AnomalyDetector.Config.model_fields
        default = {k: cfg[k].default for k in ("method", "backbone", "weights", "size")}
        shown = [b for b in available_backbones() if b in _SHOWN_BACKBONES]
        return {
            "version": __version__,
            "home": str(studio.workspace.home),
            "start": studio.start,
            "tasks": list(TASKS),
            "suffixes": list(IMAGE_SUFFIXES),
            "limits": {
                "max_file_bytes": limits.max_file_bytes,
                "max_request_bytes": limits.max_request_bytes,
                "max_files": limits.max_files,
            },
            "tips": work.TIPS,
            # the library's own defaults, so the screen follows them
            "defaults": {
                "classify": {
                    "epochs": min(EPOCHS, work.DEFAULT_EPOCHS),
                    "batch_size": "auto",
                    "lr": 3e-3,
                    "size": CLASSIFY_SIZE["image"],
                },
                "anomaly": {
                    **default,
                    "size": "" if default["size"] == "auto" else default["size"],
                },
            },
            "methods": available_detectors(),
            "backbones": [default["backbone"], *(b for b in shown if b != default["backbone"])],
            "weights": [
                default["weights"],
                *(w for w in ("imagenet", "none") if w != default["weights"]),
            ],
            "explain_methods": available_methods(),
            "onnx": work.onnx_available(),
        }

    # ------------------------------------------------------------------ projects
    @app.get("/api/projects")
    def projects() -> dict[str, Any]:
        return {"projects": studio.workspace.projects()}

    @app.post("/api/projects")
    async def create_project(request: Request) -> dict[str, Any]:
        body = await _json_body(request)
        project = studio.workspace.create(
            check_name(body.get("name"), "project name"), body.get("task")
        )
        return project.summary()

    @app.get("/api/projects/{name}")
    def project(name: str) -> dict[str, Any]:
        p = studio.project(name)
        runner = studio.runner(p)
        active = runner.active()
        latest = {}
        for job in runner.list():
            latest.setdefault(job.kind, job.public())
        return {
            **p.summary(),
            "classes": p.classes(),
            "balance": p.balance(),
            "model": p.model_info(),
            "active_job": active.public() if active else None,
            "latest_jobs": latest,
            "report": (p.paths.report("model") / "report.html").is_file(),
        }

    @app.get("/api/projects/{name}/download")
    def download_project(name: str) -> FileResponse:
        p = studio.project(name)
        return _zip_response(p.project_zip(), f"{p.name}.zip")

    # ------------------------------------------------------------------ classes
    @app.post("/api/projects/{name}/classes")
    async def add_class(name: str, request: Request) -> dict[str, Any]:
        p = studio.project(name)
        body = await _json_body(request)
        return {"name": p.add_class(body.get("name")), "classes": p.classes()}

    @app.patch("/api/projects/{name}/classes/{cls}")
    async def rename_class(name: str, cls: str, request: Request) -> dict[str, Any]:
        p = studio.project(name)
        _no_job(studio, p)
        body = await _json_body(request)
        return {"name": p.rename_class(cls, body.get("name")), "classes": p.classes()}

    @app.delete("/api/projects/{name}/classes/{cls}")
    def delete_class(name: str, cls: str) -> dict[str, Any]:
        p = studio.project(name)
        _no_job(studio, p)
        p.delete_class(cls)
        return {"classes": p.classes()}

    @app.get("/api/projects/{name}/classes/{cls}/images")
    def images(name: str, cls: str, area: str = "data") -> dict[str, Any]:
        p = studio.project(name)
        p.require_class(cls)
        return {"class": cls, "area": area, "images": p.images(cls, area)}

    @app.post("/api/projects/{name}/classes/{cls}/images")
    async def upload(name: str, cls: str, request: Request) -> dict[str, Any]:
        p = studio.project(name)
        p.require_class(cls)
        files = await _uploads(request, limits)
        results = await asyncio.to_thread(p.add_images, cls, files, limits)
        return {"results": results, "classes": p.classes()}

    @app.delete("/api/projects/{name}/classes/{cls}/images/{file}")
    def delete_image(name: str, cls: str, file: str, area: str = "data") -> dict[str, Any]:
        p = studio.project(name)
        p.delete_image(cls, file, area)
        return {"classes": p.classes()}

    @app.delete("/api/projects/{name}/classes/{cls}/generated")
    def clear_generated(name: str, cls: str) -> dict[str, Any]:
        p = studio.project(name)
        _no_job(studio, p)
        p.require_class(cls)
        return {"removed": p.clear_generated(cls), "classes": p.classes()}

    @app.get("/api/projects/{name}/thumbs/{area}/{cls}/{file}")
    async def thumbnail(name: str, cls: str, file: str, area: str) -> Response:
        p = studio.project(name)
        png = await asyncio.to_thread(p.thumbnail, cls, file, area)
        return Response(png, media_type="image/png")

    # ------------------------------------------------------------------ jobs
    @app.post("/api/projects/{name}/generate")
    async def generate(name: str, request: Request) -> dict[str, Any]:
        p = studio.project(name)
        body = await _json_body(request)
        cls = check_name(body.get("class"), "class name")
        p.require_class(cls)
        method = body.get("method", "augment")
        count = _int(body.get("count"), "count")
        if method not in ("augment", "vae"):
            raise StudioError(f"method must be 'augment' or 'vae' (use AI), got {method!r}")
        params = {"class": cls, "method": method, "count": count}
        job = studio.runner(p).start(
            "generate", params, lambda ctx: _locked(work.generate, p, cls, count, method, ctx)
        )
        return job.public()

    @app.post("/api/projects/{name}/train")
    async def train(name: str, request: Request) -> dict[str, Any]:
        p = studio.project(name)
        body = await _json_body(request)
        settings = work.TrainSettings.parse(body, p.task)
        job = studio.runner(p).start(
            "train", body, lambda ctx: _locked(work.train, p, settings, ctx)
        )
        return job.public()

    @app.post("/api/projects/{name}/evaluate")
    def evaluate(name: str) -> dict[str, Any]:
        p = studio.project(name)
        job = studio.runner(p).start("evaluate", {}, lambda ctx: _locked(work.evaluate, p, ctx))
        return job.public()

    @app.get("/api/projects/{name}/jobs")
    def jobs(name: str) -> dict[str, Any]:
        runner = studio.runner(studio.project(name))
        return {"jobs": [j.public() for j in runner.list()]}

    @app.get("/api/projects/{name}/jobs/{job_id}")
    def job(name: str, job_id: str) -> dict[str, Any]:
        return studio.runner(studio.project(name)).get(job_id).public()

    @app.post("/api/projects/{name}/jobs/{job_id}/cancel")
    def cancel(name: str, job_id: str) -> dict[str, Any]:
        return studio.runner(studio.project(name)).cancel(job_id).public()

    @app.get("/api/projects/{name}/jobs/{job_id}/events")
    async def events(name: str, job_id: str) -> StreamingResponse:
        runner = studio.runner(studio.project(name))
        the_job = runner.get(job_id)

        async def stream() -> Any:
            version = -1
            while True:
                if the_job.version != version:
                    version = the_job.version
                    yield f"data: {json.dumps(the_job.public())}\n\n"
                    if the_job.state in FINISHED:
                        return
                else:
                    yield ": keep-alive\n\n"
                await asyncio.to_thread(runner.wait_change, the_job, version, EVENT_HEARTBEAT)

        return StreamingResponse(
            stream(), media_type="text/event-stream", headers={"X-Accel-Buffering": "no"}
        )

    # ------------------------------------------------------------------ test & export
    @app.post("/api/projects/{name}/predict")
    async def predict(name: str, request: Request) -> dict[str, Any]:
        p = studio.project(name)
        form_files, explain = await _uploads(request, limits, with_field="explain")
        return await asyncio.to_thread(_predict, p, form_files, explain or None, limits)

    @app.get("/api/projects/{name}/threshold")
    async def threshold(name: str) -> dict[str, Any]:
        p = studio.project(name)
        return await asyncio.to_thread(_turn, work.threshold_view, p)

    @app.post("/api/projects/{name}/threshold")
    async def set_threshold(name: str, request: Request) -> dict[str, Any]:
        p = studio.project(name)
        _no_job(studio, p)
        body = await _json_body(request)
        return await asyncio.to_thread(
            _turn,
            work.save_threshold,
            p,
            body.get("threshold"),
            body.get("review_threshold"),
            body.get("region_rate"),
        )

    @app.get("/api/projects/{name}/report")
    def report(name: str) -> FileResponse:
        p = studio.project(name)
        path = p.paths.report("model") / "report.html"
        if not path.is_file() or path.is_symlink():
            raise StudioError("no report yet: run the evaluation first")
        return FileResponse(
            path, media_type="text/html", headers={"Content-Security-Policy": REPORT_CSP}
        )

    @app.get("/api/projects/{name}/model/download")
    def download_model(name: str) -> FileResponse:
        p = studio.project(name)
        return _zip_response(p.model_zip(), f"{p.name}-model.zip")

    @app.get("/api/projects/{name}/model/onnx")
    async def download_onnx(name: str) -> FileResponse:
        _no_job(studio, studio.project(name))
        p = studio.project(name)
        path = await asyncio.to_thread(_turn, work.export_onnx, p)
        return _zip_response(path, f"{p.name}-onnx.zip")


#: Backbones offered on the Train screen (the library may know many more).
_SHOWN_BACKBONES = ("efficientnet_lite0", "resnet18", "wide_resnet50_2", "mobilenet_v3_large")


def _predict(
    p: StudioProject, files: list[tuple[str, bytes]], explain: str | None, limits: UploadLimits
) -> dict[str, Any]:
    """Test images: each checked and decoded like an upload, then run through the model;
    a bad image is a row with an ``error``."""
    import shutil
    import tempfile

    if not files:
        raise StudioError("drop at least one image")
    scratch = p.studio_dir / "tmp"
    scratch.mkdir(parents=True, exist_ok=True)
    folder = Path(tempfile.mkdtemp(dir=scratch, prefix="test-"))
    try:
        (folder / "in").mkdir()
        good, names, rows = [], [], []
        for raw_name, payload in files:
            try:
                saved = p.save_upload(folder / "in", raw_name, payload, limits)
                good.append(folder / "in" / saved)
                names.append(upload_name(raw_name))
            except InspectkitError as exc:
                rows.append({"input": str(raw_name), "error": str(exc)})
        if good:
            rows = _turn(work.predict, p, good, names, explain) + rows
        return {"results": rows}
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _locked(func: Any, *args: Any) -> Any:
    """A job's work, holding the model lock for its whole run."""
    with work.model_turn(wait=None):
        return func(*args)


def _turn(func: Any, *args: Any) -> Any:
    """A request's model work, refused as busy when a job holds the model too long."""
    with work.model_turn():
        return func(*args)


def _no_job(studio: Studio, p: StudioProject) -> None:
    active = studio.runner(p).active()
    if active is not None:
        raise StudioError(f"a {active.kind} job is running; wait for it or cancel it first")


def _int(value: Any, what: str) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        raise StudioError(f"{what} must be a whole number, got {value!r}") from None


async def _json_body(request: Request) -> dict[str, Any]:
    try:
        body = await request.json()
    except (ValueError, UnicodeDecodeError):
        raise StudioError("the request body must be JSON") from None
    if not isinstance(body, dict):
        raise StudioError("the request body must be a JSON object")
    return body


async def _uploads(request: Request, limits: UploadLimits, with_field: str | None = None) -> Any:
    """The files of a multipart request as ``(name, bytes)``, each read up to the per-file
    limit (and the text field ``with_field`` when asked)."""
    try:
        form = await request.form(max_files=limits.max_files, max_fields=20)
    except TooLarge:
        raise
    except Exception as exc:  # malformed multipart, too many files
        detail = getattr(exc, "detail", None) or str(exc)
        raise StudioError(f"cannot read the upload: {detail}") from None
    files: list[tuple[str, bytes]] = []
    for key, value in form.multi_items():
        if not isinstance(value, UploadFile) or key != "files":
            continue
        # one byte over the limit is enough for the per-file check to refuse it
        files.append((value.filename or "(no name)", await value.read(limits.max_file_bytes + 1)))
    if with_field is None:
        return files
    field = form.get(with_field)
    return files, field if isinstance(field, str) else None


def _zip_response(path: Path, filename: str) -> FileResponse:
    return FileResponse(
        path,
        filename=filename,
        media_type="application/zip",
        background=BackgroundTask(path.unlink, missing_ok=True),
    )


__all__ = ["BodyLimit", "LocalOnly", "Studio", "create_app"]
