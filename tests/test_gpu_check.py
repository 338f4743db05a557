"""benchmarks/gpu_check.py must work the first time a GPU is lent: its CPU mode runs the same
steps (build skipped, a short test selection, every gpu_cases() at small sizes) here."""
import json
import os
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_gpu_check_cpu_mode(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "OUT"}
    env["OUT"] = str(tmp_path / "out")
    r = subprocess.run([sys.executable, "benchmarks/gpu_check.py", "--cpu", "--skip-tests", "--bench-seconds", "240",
                        "--results-dir", str(tmp_path / "results")], cwd=ROOT, env=env, capture_output=True,
                       text=True, timeout=900)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "copy bandwidth" in r.stdout
    res = list((tmp_path / "results").glob("cpu_*.json"))
    assert len(res) == 1 and list((tmp_path / "out").glob("cpu_*.md")), r.stdout[-2000:]
    rows = json.loads(res[0].read_text())["rows"]
    # every benchmark module with gpu_cases() contributed rows, each with eager and a fused provider
    mods = [p.stem for p in (ROOT / "benchmarks").glob("bench_*.py") if "def gpu_cases" in p.read_text()]
    assert rows, r.stdout[-2000:]
    assert "import failed" not in r.stdout and "gpu_cases failed" not in r.stdout, r.stdout[-3000:]
    assert len({row["case"] for row in rows}) >= len(mods)
    assert all(row["ms"] > 0 and row["gbs"] > 0 for row in rows)
