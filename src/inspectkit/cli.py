"""The ``inspectkit`` command line.

Exit codes: 0 on success, 2 on bad arguments or input (one line naming the problem),
1 on an internal failure. A user mistake never prints a Python traceback.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections.abc import Callable, Sequence
from importlib import resources
from pathlib import Path
from typing import Any

from inspectkit._version import __version__
from inspectkit.errors import InspectkitError

log = logging.getLogger("inspectkit.cli")

EXIT_OK, EXIT_INTERNAL, EXIT_USAGE = 0, 1, 2


class UsageError(InspectkitError):
    """Bad command-line arguments."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        raise UsageError(f"{self.prog}: {message}")


def demo_data_path(name: str) -> Path:
    """Path of a file shipped in ``inspectkit/data``."""
    return Path(str(resources.files("inspectkit") / "data" / name))


def cmd_demo(args: argparse.Namespace) -> int:
    """Train and evaluate a compact wafer-map classifier on the shipped WM-811K sample."""
    import inspectkit as ik
    from inspectkit.metrics import classification_report
    from inspectkit.sources import load_wafer_maps
    from inspectkit.stages import Classifier, Wrangle

    t0 = time.perf_counter()
    train = load_wafer_maps(demo_data_path("wm811k_demo_train.npz"))
    test = load_wafer_maps(demo_data_path("wm811k_demo_test.npz"))
    _say(args, f"wafer line demo: {len(train)} training maps, {len(test)} test maps, 9 classes")
    pipe = ik.Pipeline(
        [
            Wrangle(size=args.size),
            Classifier(arch="compact", epochs=args.epochs, seed=args.seed, progress=not args.quiet),
        ]
    )
    pipe.fit(train)
    pred = pipe.run(test)
    report = classification_report(pred, title="WM-811K demo sample: compact CNN")
    out = Path(args.out)
    pipe.save(out / "model")
    report.save(out / "report.json")
    html = _write_html(report, out)
    elapsed = time.perf_counter() - t0
    if args.json:
        print(
            json.dumps({"metrics": report.metrics, "out": str(out), "seconds": round(elapsed, 1)})
        )
    else:
        m = report.metrics
        _say(
            args,
            f"accuracy {m.get('accuracy', float('nan')):.3f}  macro-F1 {m.get('macro_f1', float('nan')):.3f}"
            f"  ({elapsed:.0f} s)",
            always=True,
        )
        for cls, fig in report.per_class.items():
            _say(args, f"  {cls:<10} recall {fig.get('recall', float('nan')):.2f}")
        _say(args, f"model saved to {out / 'model'}; report at {html or out / 'report.json'}")
    return EXIT_OK


def _write_html(report: Any, out: Path) -> Path | None:
    """HTML report when the report module is available (it needs matplotlib)."""
    try:
        from inspectkit.report import write_html
    except ImportError:
        return None
    return write_html(report, out)


def _say(args: argparse.Namespace, text: str, *, always: bool = False) -> None:
    if always or not getattr(args, "quiet", False):
        print(text)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="inspectkit", description="AI visual inspection for production lines.")
    parser.add_argument("--version", action="version", version=f"inspectkit {__version__}")
    parser.add_argument("--verbose", "-v", action="store_true", help="log progress details")
    sub = parser.add_subparsers(dest="command", parser_class=_Parser)

    p = sub.add_parser(
        "demo", help="train and evaluate a wafer-map classifier on shipped sample data"
    )
    p.add_argument("--out", default="inspectkit-demo", help="output folder (model + report)")
    p.add_argument("--epochs", type=int, default=12)
    p.add_argument("--size", type=int, default=48, help="wafer maps are resized to SIZE×SIZE")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quiet", "-q", action="store_true", help="print only the final figures")
    p.add_argument("--json", action="store_true", help="print the metrics as JSON")
    p.set_defaults(func=cmd_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``inspectkit`` console script."""
    try:
        parser = build_parser()
        args = parser.parse_args(argv)
        logging.basicConfig(
            level=logging.INFO if args.verbose else logging.WARNING,
            format="%(levelname)s %(name)s: %(message)s",
        )
        func: Callable[[argparse.Namespace], int] | None = getattr(args, "func", None)
        if func is None:
            parser.print_help()
            return EXIT_USAGE
        return func(args)
    except InspectkitError as exc:
        print(f"inspectkit: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("inspectkit: interrupted", file=sys.stderr)
        return EXIT_INTERNAL
    except Exception as exc:  # internal failure: say so, keep the traceback for -v
        log.debug("internal error", exc_info=True)
        print(f"inspectkit: internal error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return EXIT_INTERNAL


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
