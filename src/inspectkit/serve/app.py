"""The inspection service: one model loaded once, answered over HTTP (FastAPI).

Endpoints: ``POST /predict`` (one or several images as multipart ``files``, or one image
as the raw body with ``?name=FILE``) answers the JSON of ``inspectkit predict --json``;
``GET /health``; ``GET /model`` (the model card); ``POST /reload`` (SIGHUP does the same
under ``inspectkit serve``); ``GET /metrics`` (Prometheus text).

Reload is atomic: the new model is loaded completely beside the old one, then one
reference assignment swaps it in. Every request takes that reference once, at its start,
and uses only it, so no request is ever answered by a mix of two models; the old model
is freed when its last request ends. A model that fails to load leaves the old one
serving (the reload answers 422 with the reason).

Building a backbone's feature extractor traces it with ``torch.fx``, which patches module
calls process-wide while it runs; so a model is loaded while no inference runs
(:class:`SharedExclusive`): requests wait for a load to finish, never for each other,
and none sees a half-patched torch.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse, PlainTextResponse
from starlette.concurrency import run_in_threadpool

from inspectkit.errors import InspectkitError
from inspectkit.serve.drift import DEFAULT_ALARM, DriftMonitor
from inspectkit.serve.metrics import Metrics
from inspectkit.serve.predictors import Predictor, load_predictor, read_paths, read_upload
from inspectkit_runtime.errors import InputError

log = logging.getLogger(__name__)

#: Largest request body accepted (bytes); larger ones get 413.
DEFAULT_MAX_BODY = 64 * 1024 * 1024
#: Schema tag of ``POST /predict`` answers (the one of ``inspectkit predict --json``).
PREDICT_SCHEMA = "inspectkit.predict/1"


class SharedExclusive:
    """A readers-writer lock: many inferences at once, or one model load (which waits for
    running inferences and holds new ones back until it is done)."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._readers = 0
        self._writing = False
        self._waiting_writers = 0

    @contextmanager
    def shared(self) -> Iterator[None]:
        with self._cond:
            while self._writing or self._waiting_writers:
                self._cond.wait()
            self._readers += 1
        try:
            yield
        finally:
            with self._cond:
                self._readers -= 1
                self._cond.notify_all()

    @contextmanager
    def exclusive(self) -> Iterator[None]:
        with self._cond:
            self._waiting_writers += 1
            while self._writing or self._readers:
                self._cond.wait()
            self._waiting_writers -= 1
            self._writing = True
        try:
            yield
        finally:
            with self._cond:
                self._writing = False
                self._cond.notify_all()


@dataclass
class Loaded:
    """One loaded model and the requests it is answering."""

    predictor: Predictor
    generation: int
    loaded_at: str
    in_flight: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def enter(self) -> None:
        with self.lock:
            self.in_flight += 1

    def leave(self) -> None:
        with self.lock:
            self.in_flight -= 1


class ModelHolder:
    """The one model reference requests take; :meth:`reload` swaps it atomically."""

    def __init__(
        self, path: str | os.PathLike[str], reference: Sequence[str] | None = None, **options: Any
    ) -> None:
        self.path = Path(path)
        self.reference_paths = list(reference or [])
        self.options = options
        self._swap = threading.Lock()
        self.torch = SharedExclusive()
        self.generation = 0
        self.current: Loaded = self._load()

    def _load(self) -> Loaded:
        with self.torch.exclusive():
            predictor = load_predictor(self.path, **self.options)
        self.generation += 1
        return Loaded(
            predictor, self.generation, datetime.now(timezone.utc).isoformat(timespec="seconds")
        )

    def reference_scores(self, loaded: Loaded) -> list[float] | None:
        """Scores of the ``--reference`` good parts under ``loaded`` (``None`` without)."""
        if not self.reference_paths or loaded.predictor.task != "anomaly":
            return None
        items = read_paths(self.reference_paths, loaded.predictor.kind, loaded.predictor.channels)
        _, scores = self.predict(loaded, items)
        return None if scores is None else [float(s) for s in scores]

    def reload(self) -> Loaded:
        """Load the model at :attr:`path` again and swap it in (one at a time)."""
        with self._swap:
            new = self._load()
            self.current = new  # one reference assignment: atomic for readers
            return new

    def predict(self, loaded: Loaded, items: Sequence[Any]) -> tuple[list[dict[str, Any]], Any]:
        """``loaded``'s predictions, while no model is being loaded."""
        with self.torch.shared():
            return loaded.predictor.predict(items)

    @property
    def in_flight(self) -> int:
        return self.current.in_flight


def create_app(
    model: str | os.PathLike[str],
    *,
    reference: Sequence[str] | None = None,
    max_body: int = DEFAULT_MAX_BODY,
    drift_window: int = 500,
    drift_alarm: float = DEFAULT_ALARM,
    **options: Any,
) -> Any:
    """The FastAPI application serving ``model`` (a model folder or ``MODEL.onnx``).

    Args:
        model: Saved pipeline folder (torch) or exported ``MODEL.onnx`` (ONNX Runtime).
        reference: Files or folders of good parts whose scores are the drift reference
            (e.g. the calibration goods); scored at start and after each reload.
        max_body: Largest request body in bytes (413 above it).
        drift_window: Recent scores the drift is measured on.
        drift_alarm: PSI above which ``inspectkit_score_drift_alarm`` is 1.
        options: Passed to the ONNX Runtime model (``threads``, ``batch_size``).
    """
    holder = ModelHolder(model, reference, **options)
    drift = DriftMonitor(window=drift_window, alarm=drift_alarm)
    metrics = Metrics(drift)

    def set_reference(loaded: Loaded) -> None:
        scores = holder.reference_scores(loaded)
        if scores is not None:
            drift.set_reference(scores)

    set_reference(holder.current)
    app = FastAPI(title="inspectkit", version=_version())
    app.state.holder = holder
    app.state.metrics = metrics
    app.state.drift = drift

    @app.middleware("http")
    async def limit_and_count(request: Request, call_next: Any) -> Any:
        length = request.headers.get("content-length")
        endpoint = request.url.path
        if length is not None and length.isdigit() and int(length) > max_body:
            metrics.request(endpoint, 413)
            return JSONResponse(
                {"detail": f"request body of {length} bytes exceeds the limit of {max_body}"},
                status_code=413,
            )
        response = await call_next(request)
        metrics.request(endpoint, response.status_code)
        return response

    async def body_within_limit(request: Request) -> bytes:
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > max_body:
                raise HTTPException(413, f"request body exceeds the limit of {max_body} bytes")
            chunks.append(chunk)
        return b"".join(chunks)

    async def uploads(request: Request) -> list[tuple[str, bytes]]:
        kind = request.headers.get("content-type", "")
        if kind.startswith("multipart/form-data"):
            body = await body_within_limit(request)  # read once, counted, before parsing
            form = await _parse_form(request, body)
            files = [
                (f.filename or "upload", await f.read())
                for f in form.getlist("files")
                if hasattr(f, "read")
            ]
            if not files:
                raise HTTPException(422, "no files: send images as multipart form field 'files'")
            return files
        body = await body_within_limit(request)
        if not body:
            raise HTTPException(
                422, "empty request: send images as multipart 'files' or one image as the body"
            )
        return [(request.query_params.get("name", "upload"), body)]

    @app.post("/predict")
    async def predict(request: Request) -> Any:
        loaded = holder.current  # taken once: this request sees one model only
        loaded.enter()
        try:
            start = time.perf_counter()
            files = await uploads(request)
            p = loaded.predictor
            items = []
            try:
                for name, data in files:
                    items.extend(read_upload(data, name, p.kind, p.channels))
            except InputError as exc:
                raise HTTPException(422, str(exc)) from None
            try:
                rows, scores = await run_in_threadpool(holder.predict, loaded, items)
            except (InspectkitError, InputError) as exc:
                raise HTTPException(422, " ".join(str(exc).split())) from None
            if scores is not None:
                drift.add(scores.tolist())
            metrics.predicted(rows, time.perf_counter() - start, p.task)
            return {
                "schema": PREDICT_SCHEMA,
                "task": p.task,
                "model_generation": loaded.generation,
                "predictions": rows,
            }
        finally:
            loaded.leave()

    @app.get("/health")
    def health() -> Any:
        loaded = holder.current
        st = drift.status()
        return {
            "status": "ok",
            "task": loaded.predictor.task,
            "model": str(loaded.predictor.path),
            "model_generation": loaded.generation,
            "loaded_at": loaded.loaded_at,
            "in_flight": loaded.in_flight,
            "inputs": metrics.inputs,
            "drift": {
                "psi": st.psi,
                "ks": st.ks,
                "alarm": st.alarm,
                "reference_size": st.reference_size,
                "window": st.recent_size,
            },
        }

    @app.get("/model")
    def model_card() -> Any:
        loaded = holder.current
        return {
            **loaded.predictor.card(),
            "model_generation": loaded.generation,
            "loaded_at": loaded.loaded_at,
        }

    @app.post("/reload")
    def reload() -> Any:
        try:
            new = holder.reload()
            set_reference(new)
        except (InspectkitError, InputError, OSError, ValueError) as exc:
            metrics.reload_failures += 1
            raise HTTPException(
                422,
                f"reload failed, the previous model keeps serving: {' '.join(str(exc).split())}",
            ) from None
        metrics.reloads += 1
        return {
            "status": "reloaded",
            "model_generation": new.generation,
            "loaded_at": new.loaded_at,
        }

    @app.get("/metrics")
    def prometheus() -> Any:
        loaded = holder.current
        text = metrics.render(
            in_flight=loaded.in_flight, generation=loaded.generation, task=loaded.predictor.task
        )
        return PlainTextResponse(text, media_type="text/plain; version=0.0.4")

    return app


async def _parse_form(request: Any, body: bytes) -> Any:
    """The multipart form of ``body`` (already read and size-checked)."""
    from starlette.requests import Request

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": body, "more_body": False}

    return await Request(request.scope, receive).form()


def _version() -> str:
    from inspectkit._version import __version__

    return __version__


__all__ = ["DEFAULT_MAX_BODY", "Loaded", "ModelHolder", "SharedExclusive", "create_app"]
