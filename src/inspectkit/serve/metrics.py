"""The service's counters, latency histogram and drift, in Prometheus text format."""

from __future__ import annotations

import threading
from collections import Counter, deque
from typing import Any

from inspectkit.serve.drift import DriftMonitor

#: Upper bounds (seconds) of the request latency histogram.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


def _labels(**kv: Any) -> str:
    inner = ",".join(
        f'{k}="{str(v).replace(chr(92), chr(92) * 2).replace(chr(34), chr(92) + chr(34)).replace(chr(10), " ")}"'
        for k, v in kv.items()
    )
    return "{" + inner + "}" if inner else ""


class Metrics:
    """Thread-safe counts of requests, inputs and outcomes; predict latencies; drift."""

    def __init__(self, drift: DriftMonitor, recent: int = 1000) -> None:
        self.drift = drift
        self._lock = threading.Lock()
        self.requests: Counter[tuple[str, int]] = Counter()
        self.outcomes: Counter[str] = Counter()
        self.inputs = 0
        self.buckets = [0] * (len(LATENCY_BUCKETS) + 1)
        self.latency_sum = 0.0
        self.latency_count = 0
        self.recent_latency: deque[float] = deque(maxlen=recent)
        self.recent_flags: deque[bool] = deque(maxlen=recent)
        self.reloads = 0
        self.reload_failures = 0

    def request(self, endpoint: str, status: int) -> None:
        with self._lock:
            self.requests[(endpoint, status)] += 1

    def predicted(self, rows: list[dict[str, Any]], seconds: float, task: str) -> None:
        with self._lock:
            self.inputs += len(rows)
            for row in rows:
                if task == "anomaly":
                    flag = row.get("anomalous")
                    outcome = {True: "anomalous", False: "good", None: "uncalibrated"}[flag]
                    if flag is False and row.get("review"):
                        outcome = "review"  # in the detector's review band
                    self.outcomes[outcome] += 1
                    if flag is not None:
                        self.recent_flags.append(bool(flag))
                else:
                    self.outcomes[
                        row["predicted"] if row["predicted"] is not None else "review"
                    ] += 1
            i = next(
                (k for k, b in enumerate(LATENCY_BUCKETS) if seconds <= b), len(LATENCY_BUCKETS)
            )
            self.buckets[i] += 1
            self.latency_sum += seconds
            self.latency_count += 1
            self.recent_latency.append(seconds)

    def latency_quantiles(self) -> dict[str, float | None]:
        with self._lock:
            values = sorted(self.recent_latency)
        if not values:
            return {"p50": None, "p99": None}
        return {
            "p50": values[min(len(values) - 1, int(0.50 * len(values)))],
            "p99": values[min(len(values) - 1, int(0.99 * len(values)))],
        }

    def render(self, *, in_flight: int, generation: int, task: str) -> str:
        """Prometheus text exposition format (version 0.0.4)."""
        lines: list[str] = []

        def metric(name: str, kind: str, help_: str, samples: list[tuple[str, float]]) -> None:
            lines.append(f"# HELP {name} {help_}")
            lines.append(f"# TYPE {name} {kind}")
            lines.extend(f"{name}{labels} {value:.10g}" for labels, value in samples)

        with self._lock:
            requests = sorted(self.requests.items())
            outcomes = sorted(self.outcomes.items())
            flags = list(self.recent_flags)
            buckets = list(self.buckets)
            total, count, inputs = self.latency_sum, self.latency_count, self.inputs
            reloads, failures = self.reloads, self.reload_failures
        metric(
            "inspectkit_requests_total",
            "counter",
            "HTTP requests by endpoint and status code.",
            [(_labels(endpoint=e, status=s), n) for (e, s), n in requests],
        )
        metric("inspectkit_inputs_total", "counter", "Inputs predicted.", [("", inputs)])
        label = "verdict" if task == "anomaly" else "class"
        metric(
            "inspectkit_predictions_total",
            "counter",
            "Predictions by verdict (detectors; review = in the review band) or class "
            "(classifiers; review = rejected).",
            [(_labels(**{label: k}), n) for k, n in outcomes],
        )
        if task == "anomaly":
            rate = sum(flags) / len(flags) if flags else 0.0
            metric(
                "inspectkit_anomalous_rate",
                "gauge",
                f"Share of anomalous verdicts among the last {self.recent_flags.maxlen} inputs.",
                [("", rate)],
            )
        cumulative, samples = 0, []
        for bound, n in zip([*LATENCY_BUCKETS, float("inf")], buckets):
            cumulative += n
            samples.append(
                (_labels(le="+Inf" if bound == float("inf") else f"{bound:g}"), cumulative)
            )
        lines.append("# HELP inspectkit_predict_seconds Time to answer a /predict request.")
        lines.append("# TYPE inspectkit_predict_seconds histogram")
        lines.extend(f"inspectkit_predict_seconds_bucket{lab} {v}" for lab, v in samples)
        lines.append(f"inspectkit_predict_seconds_sum {total:.10g}")
        lines.append(f"inspectkit_predict_seconds_count {count}")
        q = self.latency_quantiles()
        metric(
            "inspectkit_predict_latency_seconds",
            "gauge",
            "Median and 99th percentile of recent /predict latencies.",
            [
                (_labels(quantile=k), v)
                for k, v in (("0.5", q["p50"]), ("0.99", q["p99"]))
                if v is not None
            ],
        )
        metric(
            "inspectkit_in_flight_requests",
            "gauge",
            "Requests being answered now.",
            [("", in_flight)],
        )
        metric(
            "inspectkit_model_generation",
            "gauge",
            "Models loaded so far (1 = the first).",
            [("", generation)],
        )
        metric("inspectkit_model_reloads_total", "counter", "Successful reloads.", [("", reloads)])
        metric(
            "inspectkit_model_reload_failures_total",
            "counter",
            "Failed reloads (the old model kept serving).",
            [("", failures)],
        )
        if task == "anomaly":
            st = self.drift.status()
            metric(
                "inspectkit_score_drift_reference_size",
                "gauge",
                "Reference good scores the drift is measured against (0 = none).",
                [("", st.reference_size)],
            )
            metric(
                "inspectkit_score_drift_window_size",
                "gauge",
                "Recent scores in the drift window.",
                [("", st.recent_size)],
            )
            if st.psi is not None and st.ks is not None:
                metric(
                    "inspectkit_score_drift_psi",
                    "gauge",
                    "Population stability index of recent scores against the reference goods.",
                    [("", st.psi)],
                )
                metric(
                    "inspectkit_score_drift_ks",
                    "gauge",
                    "Kolmogorov-Smirnov statistic of recent scores against the reference goods.",
                    [("", st.ks)],
                )
            metric(
                "inspectkit_score_drift_alarm_threshold",
                "gauge",
                "PSI above which the drift alarm is raised.",
                [("", st.threshold)],
            )
            metric(
                "inspectkit_score_drift_alarm",
                "gauge",
                "1 when recent scores have drifted from the reference goods.",
                [("", 1.0 if st.alarm else 0.0)],
            )
        return "\n".join(lines) + "\n"


__all__ = ["LATENCY_BUCKETS", "Metrics"]
