"""benchmarks/gpu_check.py must work the first time a GPU is lent: its --cpu dry run runs the same
steps here (one small family built with the parallel mechanism, the smoke on the C++ CPU backend
and the Triton interpreter, a short test selection, the process-group kill on a sleeping child,
every bench module's gpu_cases() in its own subprocess) and writes every report file."""
import json
import os
import pathlib
import subprocess
import sys
import xml.etree.ElementTree as ET

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(ROOT / "scripts"))


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("gpu_check")
    env = {k: v for k, v in os.environ.items() if k != "OUT"}
    env["OUT"] = str(tmp / "out")
    import build_ext
    # CI (a fresh setup.sh): the family is up to date, its in-place build a no-op: 110 s in all. A
    # checkout with edited sources builds it into a temporary folder first (~100 s on 2 cores).
    total = "110" if build_ext.up_to_date("depth_difference", cuda=False) else "240"
    cmd = [sys.executable, "benchmarks/gpu_check.py", "--cpu", "--quiet", "--total-seconds", total,
           "--smoke-seconds", "50", "--reps", "1", "--cpu-tests", "tests/test_dispatch.py -k backend",
           "--results-dir", str(tmp / "results")]
    r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    return r, tmp / "out", tmp / "results"


def test_dry_run_completes_and_writes_every_file(dry_run):
    r, out, res = dry_run
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    for name in ("build.log", "smoke.log", "smoke.json", "tests.log", "junit.xml"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, (name, r.stdout[-2000:])
    mds, jsons = list(out.glob("cpu_*.md")), list(out.glob("cpu_*.json"))
    assert len(mds) == 1 and len(jsons) == 1 and list(res.glob("cpu_*.json")), r.stdout[-2000:]
    assert len(list(out.iterdir())) <= 7  # the device machine returns at most 8 files (one left for a tee'd log)
    meta = json.loads(jsons[0].read_text())["meta"]
    assert meta["env"]["torch"] and "ninja" in meta["env"]
    assert "[env]" in r.stdout and "nvcc" in r.stdout
    assert "[done]" in r.stdout


def test_dry_run_build_uses_the_parallel_mechanism(dry_run):
    r, out, _ = dry_run
    text = (out / "build.log").read_text()
    assert "[build_ext] families depth_difference" in text and "1/1 families ok" in text, text[-2000:]
    assert "CUDA extensions OFF" in text or "skipping" in text or "up-to-date" in text or text.count("[depth_difference]")


def test_dry_run_smoke_every_op_ok(dry_run):
    _, out, _ = dry_run
    import gpu_smoke
    rows = json.loads((out / "smoke.json").read_text())["rows"]
    ops = {r["case"] for r in rows if r["group"] == "op" and r["backend"] == "cpu" and r["status"] == "OK"}
    assert set(gpu_smoke.public_ops()) <= ops
    assert not [r for r in rows if r["status"] == "FAIL"], [r for r in rows if r["status"] == "FAIL"]
    # the GPU claims are reported, as "not run" here
    assert {r["status"] for r in rows if r["group"] in ("numerics", "determinism", "bugcase")} == {"NOT RUN"}
    assert any(r["group"] == "hook" for r in rows)


def test_dry_run_tests_junit_and_kill_path(dry_run):
    r, out, _ = dry_run
    suite = ET.parse(out / "junit.xml").getroot()
    suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
    assert int(suite.get("tests")) > 0 and int(suite.get("failures")) == 0
    assert "kill check OK" in r.stdout, r.stdout[-2000:]
    assert "[exit timeout]" in (out / "tests.log").read_text()


def test_dry_run_bench_rows_rewritten(dry_run):
    _, out, _ = dry_run
    data = json.loads(next(out.glob("cpu_*.json")).read_text())
    ok = [row for row in data["rows"] if "ms" in row]
    assert ok and all(row["ms"] > 0 and row["gbs"] > 0 for row in ok)
    assert {row["provider"] for row in ok} >= {"eager"}
    md = next(out.glob("cpu_*.md")).read_text()
    assert md.count("\n| ") >= len(ok)


def test_smoke_reports_a_failing_op(monkeypatch):
    """A case that raises is FAIL (not OK), and a sticky CUDA error skips the rest."""
    import gpu_smoke
    calls = []

    def bad(b, d):
        calls.append(b)
        raise RuntimeError("CUDA error: an illegal memory access was encountered")

    monkeypatch.setattr(gpu_smoke, "_op_cases", lambda: {n: (bad if n == "recover" else (lambda b, d: None))
                                                         for n in gpu_smoke.public_ops()})
    rows = gpu_smoke.run(["cpu"], "cpu", {"op"})
    st = {r["case"]: r["status"] for r in rows}
    assert st["recover"] == "FAIL" and calls == ["cpu"]
    after = [r["status"] for r in rows[[r["case"] for r in rows].index("recover") + 1:]]
    assert after and set(after) == {"SKIP"}


def test_build_ext_timeout_kills_and_reports(tmp_path):
    import build_ext
    fam = build_ext.families()[0]
    res = build_ext.build([fam], out_dir=str(tmp_path), timeout=0.5, echo=False, env=dict(os.environ, FASTDEHAZE_NO_CUDA="1"))
    ok, secs, tail = res[fam]
    assert not ok and "TIMEOUT" in tail[-1] and secs < 10
