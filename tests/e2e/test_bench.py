"""The benchmarks run in a short mode here, so they cannot rot between full runs."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.model
def test_batching_bench_quick(tmp_path: Path, gemma_path: Path) -> None:
    subprocess.run([sys.executable, str(ROOT / "bench" / "batching.py"), "--quick",
                    "--out", str(tmp_path)], check=True, timeout=300, capture_output=True)
    report = (tmp_path / "batching.md").read_text()
    rows = [line for line in report.splitlines() if line.startswith("| 1 ") or
            line.startswith("| 2 ")]
    assert len(rows) == 2
    assert all(float(row.split("|")[3]) > 0 for row in rows)
    assert "TTFT p50 idle" in report


def test_stops_bench_quick() -> None:
    result = subprocess.run([sys.executable, str(ROOT / "bench" / "stops.py"), "--quick"],
                            check=True, timeout=120, capture_output=True, text=True)
    rows = [line.split("|") for line in result.stdout.splitlines()
            if line.startswith("| ") and line[2].isdigit()]
    assert [row[1].strip() for row in rows] == ["1", "64", "1000"]
    assert all(float(row[2]) > 0 and float(row[3]) > 0 for row in rows)


@pytest.mark.model
def test_swap_bench_quick(tmp_path: Path, gemma_path: Path) -> None:
    subprocess.run([sys.executable, str(ROOT / "bench" / "swap.py"), "--quick", "--swaps", "2",
                    "--out", str(tmp_path)], check=True, timeout=300, capture_output=True)
    report = (tmp_path / "swap.md").read_text()
    rows = {line.split("|")[1].strip(): line.split("|")[2:-1] for line in report.splitlines()
            if line.startswith("| ") and not line.startswith("| target")}
    assert float(rows["cortex"][0]) > 0 and float(rows["llama-cpp-python"][0]) > 0
    assert "cortex / llama-cpp-python:" in report
