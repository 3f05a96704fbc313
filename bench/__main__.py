"""``python -m bench [--quick] [--only NAME] [--out DIR] [--data-dir DIR]``: run, print, save as JSON."""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

#: benchmark name -> module (see bench/__init__.py for what a module provides)
BENCHMARKS: dict[str, str] = {
    "store": "bench.store",
    "sagas": "bench.sagas",
    "grpc": "bench.grpc_path",
    "tracing": "bench.tracing_overhead",
    "scaleout": "bench.scaleout",
}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="a tiny run (well under a second per phase)")
    parser.add_argument(
        "--only", action="append", choices=sorted(BENCHMARKS), help="run only this benchmark (repeatable)"
    )
    parser.add_argument(
        "--out", type=Path, default=ROOT / "bench" / "results", help="where the JSON figures go"
    )
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=ROOT / "data" / "bench",
        help="a fresh temporary directory is made (and removed) under this one; it decides the disk",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    names = args.only or list(BENCHMARKS)
    args.out.mkdir(parents=True, exist_ok=True)
    for name in names:
        module = importlib.import_module(BENCHMARKS[name])
        result = module.run(quick=args.quick, data_root=args.data_dir)
        print(module.render(result))
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
        path = args.out / f"{name}-{stamp}.json"
        path.write_text(json.dumps(result, indent=2) + "\n")
        print(f"figures written to {path}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
