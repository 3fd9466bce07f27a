"""Measure preprocessing throughput and peak memory of ``prepare_dataset`` on Criteo files.

Inputs are the 137,139-row Criteo sample from ``$FEDSHAVER_DATA_DIR/criteo/criteo_kaggle_sample137k.tsv.gz``
and larger files made by concatenating that sample 4 and 8 times (default ``--repeats 1 4 8``). The
repeated files are gzip-compressed (level 1) into a temporary folder that is deleted at the end, and the
1x input is written the same way so that every input goes through the same decompression.

Every measurement runs in a fresh Python subprocess that reports its own peak resident set size
(``ru_maxrss``) twice: after importing fedshaver and after ``prepare_dataset`` returns. Their difference
is the memory the preparation itself needs. Rows are streamed in chunks, and the per-field token tables
grow with the number of distinct values only, so this difference should stay flat as the file grows.
Repeating the sample adds no distinct values (the "distinct tokens" column stays the same). It does
multiply every count, so more tokens reach min_count and the number of features grows.

Throughput is data lines per second of wall-clock time over the whole ``prepare_dataset`` call, all
passes and the writing of the cache folder included. ``--compare-src DIR`` also measures the ``fedshaver`` package found in ``DIR``
(for example ``git archive HEAD fedshaver | tar -x -C DIR``) in the same run, for before/after numbers.

Usage::

    FEDSHAVER_DATA_DIR=/path/to/data python benchmarks/prepare.py
    FEDSHAVER_DATA_DIR=/path/to/data python benchmarks/prepare.py --repeats 1 4 --compare-src /tmp/old
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path

SAMPLE = Path("criteo") / "criteo_kaggle_sample137k.tsv.gz"
DEFAULT_OUTPUT = Path(__file__).resolve().parent / "results" / "prepare.json"
COPY_BLOCK_BYTES = 1 << 24


def run_child(data_file: str, cache_dir: str, chunk_rows: int) -> None:
    """Prepare one file and print the measurements as one JSON line (runs in the subprocess)."""
    import fedshaver
    from fedshaver.data.preprocess import prepare_dataset

    rss_after_import_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    started = time.perf_counter()
    dataset = prepare_dataset([data_file], "criteo", cache_dir, chunk_rows=chunk_rows, progress=False)
    seconds = time.perf_counter() - started
    peak_rss_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    report = dataset.report
    result = {
        "package": str(Path(fedshaver.__file__).parent),
        "data_lines": report["data_lines"],
        "rows": report["rows"],
        "positives": report["positives"],
        "num_features": dataset.feature_map.num_features,
        "distinct_tokens": sum(report["distinct_tokens"].values()) if "distinct_tokens" in report else None,
        "seconds": round(seconds, 3),
        "pass_seconds": report["seconds"],
        "rows_per_second": round(report["data_lines"] / seconds, 1),
        # ru_maxrss is in KiB on Linux.
        "rss_after_import_mib": round(rss_after_import_kib / 1024, 1),
        "peak_rss_mib": round(peak_rss_kib / 1024, 1),
    }
    print(json.dumps(result))


def write_repeated(source: Path, target: Path, repeats: int) -> None:
    """Write ``repeats`` concatenated copies of the decompressed ``source`` as a gzip file."""
    with gzip.open(target, "wb", compresslevel=1) as out:
        for _ in range(repeats):
            with gzip.open(source, "rb") as handle:
                shutil.copyfileobj(handle, out, COPY_BLOCK_BYTES)


def measure(data_file: Path, work_dir: Path, chunk_rows: int, package_src: Path | None) -> dict:
    """Run one preparation in a fresh subprocess and return its measurements."""
    cache_dir = work_dir / "cache"
    env = dict(os.environ)
    if package_src is not None:
        # PYTHONPATH precedes the editable install's finder, so the child imports the package in package_src.
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(package_src), env.get("PYTHONPATH", "")]))
    command = [sys.executable, str(Path(__file__).resolve()), "--child", str(data_file), str(cache_dir), "--chunk-rows", str(chunk_rows)]
    try:
        completed = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    finally:
        shutil.rmtree(cache_dir, ignore_errors=True)
    if completed.returncode != 0:
        raise RuntimeError(f"benchmark subprocess failed with exit code {completed.returncode}:\n{completed.stderr}")
    return json.loads(completed.stdout.strip().splitlines()[-1])


def machine_info() -> dict:
    """Return the CPU count, platform and library versions of this machine."""
    versions = {}
    for package in ("numpy", "pandas", "torch", "pyarrow"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = None
    return {
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "python": platform.python_version(),
        **versions,
    }


def format_table(results: list[dict]) -> str:
    """Return the measurements as a Markdown table."""
    header = (
        "| code | input | data lines | distinct tokens | features | seconds | rows/s | RSS after import (MiB) | "
        "peak RSS (MiB) | peak - import (MiB) |"
    )
    separator = "|" + " --- |" * (header.count("|") - 1)
    lines = [header, separator]
    for result in results:
        growth = result["peak_rss_mib"] - result["rss_after_import_mib"]
        # Older code under --compare-src may not report distinct tokens.
        distinct = f"{result['distinct_tokens']:,}" if result.get("distinct_tokens") is not None else "n/a"
        lines.append(
            f"| {result['code']} | {result['repeats']}x | {result['data_lines']:,} | {distinct} | {result['num_features']:,} | "
            f"{result['seconds']:.1f} | {result['rows_per_second']:,.0f} | {result['rss_after_import_mib']:.0f} | "
            f"{result['peak_rss_mib']:.0f} | {growth:.0f} |"
        )
    return "\n".join(lines)


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--repeats", type=int, nargs="+", default=[1, 4, 8],
        help="input sizes, as the number of concatenated copies of the sample; one input file per value",
    )  # fmt: skip
    parser.add_argument("--chunk-rows", type=int, default=50_000, help="lines read per chunk (prepare_dataset's chunk_rows)")
    parser.add_argument(
        "--trials", type=int, default=1,
        help="runs per input and code; the table shows the fastest run and the highest peak RSS",
    )  # fmt: skip
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT, help="JSON file that receives the results")
    parser.add_argument(
        "--compare-src", type=Path, default=None,
        help="folder that contains another fedshaver package to measure in the same run (before/after numbers)",
    )  # fmt: skip
    parser.add_argument("--child", nargs=2, metavar=("DATA_FILE", "CACHE_DIR"), help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    if args.child:
        run_child(args.child[0], args.child[1], args.chunk_rows)
        return 0

    data_dir = os.environ.get("FEDSHAVER_DATA_DIR")
    if not data_dir:
        print(
            "FEDSHAVER_DATA_DIR is not set. Set it to the folder that contains criteo/criteo_kaggle_sample137k.tsv.gz, "
            "e.g. FEDSHAVER_DATA_DIR=/path/to/data python benchmarks/prepare.py",
            file=sys.stderr,
        )
        return 2
    source = Path(data_dir) / SAMPLE
    if not source.is_file():
        print(f"{source} not found; FEDSHAVER_DATA_DIR must contain {SAMPLE}", file=sys.stderr)
        return 2
    if args.compare_src is not None and not (args.compare_src / "fedshaver" / "__init__.py").is_file():
        print(f"--compare-src {args.compare_src} has no fedshaver/__init__.py", file=sys.stderr)
        return 2

    variants = [("current", None)]
    if args.compare_src is not None:
        variants.insert(0, (f"compare ({args.compare_src})", args.compare_src.resolve()))

    results = []
    with tempfile.TemporaryDirectory(prefix="fedshaver-bench-") as folder:
        work_dir = Path(folder)
        for repeats in args.repeats:
            data_file = work_dir / f"criteo_x{repeats}.tsv.gz"
            write_repeated(source, data_file, repeats)
            trials = {code: [] for code, _ in variants}
            # Trials alternate between the variants, so a change in machine load affects both alike.
            for _ in range(args.trials):
                for code, package_src in variants:
                    trial = measure(data_file, work_dir, args.chunk_rows, package_src)
                    trials[code].append(trial)
                    print(
                        f"{code}: {repeats}x, {trial['data_lines']:,} lines, {trial['rows_per_second']:,.0f} rows/s, "
                        f"peak RSS {trial['peak_rss_mib']:.0f} MiB",
                        file=sys.stderr,
                    )
            for code, runs in trials.items():
                result = dict(max(runs, key=lambda run: run["rows_per_second"]))
                result["peak_rss_mib"] = max(run["peak_rss_mib"] for run in runs)
                result["rss_after_import_mib"] = max(run["rss_after_import_mib"] for run in runs)
                result.update({"code": code, "repeats": repeats, "input_bytes": data_file.stat().st_size, "trials": runs})
                results.append(result)
            data_file.unlink()

    table = format_table(results)
    print(table)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    record = {
        "benchmark": "prepare_dataset throughput and peak RSS on the Criteo 137k sample repeated N times",
        "source": str(SAMPLE),
        "chunk_rows": args.chunk_rows,
        "trials": args.trials,
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": machine_info(),
        "results": results,
        "table": table,
    }
    args.output.write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")
    print(f"\nwrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
