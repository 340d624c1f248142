"""`--record` for the benchmark scripts: add markdown table rows to docs/results.md (benchmark.py)
or docs/benchmarks.md (the others), above the marker line that ends each table."""

from pathlib import Path

DOCS = Path(__file__).resolve().parents[1] / "docs"
BENCHMARKS_MD, RESULTS_MD = DOCS / "benchmarks.md", DOCS / "results.md"


def record(marker: str, rows: list[str], path: Path = BENCHMARKS_MD) -> None:
    text = path.read_text()
    if marker not in text:
        raise SystemExit(f"{path}: the line {marker!r} marks where rows go; it is missing.")
    path.write_text(text.replace(marker, "\n".join(rows) + "\n" + marker))
    print(f"added {len(rows)} row(s) to {path}")
