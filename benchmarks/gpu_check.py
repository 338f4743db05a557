#!/usr/bin/env python3
"""One-shot GPU check: environment, build, smoke, GPU tests, benchmarks, one table, in 6 minutes.

On the lent H200 (torch 2.11 cu130, triton 3.6, nvcc 13.0, 16 cores, no network):

    set -o pipefail; PYTHONUNBUFFERED=1 python3 benchmarks/gpu_check.py 2>&1 | tee $OUT/gpu_check.log
    python3 benchmarks/gpu_check.py --skip-build      # rerun on a still-warm machine

One global deadline from the script's start (``--total-seconds``, default 360); each step gets
min(its budget, what is left), and every later step still runs with what is left:

0. env: ``nvcc --version`` against ``torch.version.cuda`` (a major mismatch: CPU + Triton only),
   ninja importable (else the build is serial), the GPU's name.
1. build (150 s): a metadata-only editable install (``FASTDEHAZE_FAMILIES=none``, seconds), then
   every family in parallel, one process each (scripts/build_ext.py), FORCE_CUDA=1 and
   TORCH_CUDA_ARCH_LIST=9.0; a family whose CUDA build fails is rebuilt with
   FASTDEHAZE_NO_CUDA=1 (CPU + Triton fallback). Streamed to ``$OUT/build.log``.
2. smoke (50 s): benchmarks/gpu_smoke.py once per GPU backend (cuda, triton), each in its own
   process: every public op on tiny inputs + synchronize, the GPU numerics/determinism claims,
   the GPU-only bug cases and the issue-10 hooks. ``$OUT/smoke.log``, ``$OUT/smoke.json``.
3. tests (80 s): ``pytest tests -k cuda`` (the [triton-cuda] and [cuda-cuda] cases), no -x
   (``--maxfail=200 -rfE --tb=line``), xdist where installed, in its own process group (killed
   with its workers on timeout), ``$OUT/tests.log`` and ``$OUT/junit.xml``.
4. bench (the rest: at least ~60 s when the build takes its whole 150 s): a device-to-device copy for the bandwidth ceiling, then every bench
   module's ``gpu_cases()``, each family in its own subprocess (a sticky CUDA error stays there):
   first the fused providers (cuda, triton) and eager of every family, then torch.compile of
   every family only while more than ``--compile-min-seconds`` remain. The table (.md + .json) is
   rewritten after every case, in benchmarks/results/ and $OUT.

``--cpu`` is the dry run (tests/test_gpu_check.py): the same steps at small sizes on the CPU; the
build step builds one small family with the same parallel mechanism (in place when that is a
no-op, else into a temporary folder, never clobbering the in-place .so files), the smoke runs on
the C++ CPU backend and the Triton interpreter, the test step runs a short selection and a
deliberately tiny timeout on a sleeping child checks the process-group kill; every report file
is written.

Files under $OUT (at most 8 come back from the device machine): build.log, smoke.log,
smoke.json, tests.log, junit.xml, <mode>_<stamp>.md, <mode>_<stamp>.json (+ your tee'd log).
"""
from __future__ import annotations

import argparse
import datetime
import importlib
import json
import os
import pathlib
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from build_ext import kill_group  # noqa: E402  (SIGTERM, then SIGKILL, a process group)
T0 = time.time()
FUSED, EAGER, COMPILE = ("cuda", "triton", "cpu"), ("eager",), ("compile",)


def log(*a):
    print(*a, flush=True)


class Clock:
    """The one deadline of the run; ``budget(s)`` = min(s, what is left - reserve)."""

    def __init__(self, total):
        self.deadline = T0 + total

    def left(self):
        return self.deadline - time.time()

    def budget(self, seconds, reserve=0.0):
        return max(0.0, min(seconds, self.left() - reserve))


def out_dir() -> pathlib.Path | None:
    if os.environ.get("OUT"):
        p = pathlib.Path(os.environ["OUT"])
        p.mkdir(parents=True, exist_ok=True)
        return p
    return None


def report_dir(args) -> pathlib.Path:
    """Where logs go: $OUT, else the results folder."""
    p = out_dir() or pathlib.Path(args.results_dir)
    p.mkdir(parents=True, exist_ok=True)
    return p


def run_group(cmd, timeout, log_path=None, env=None, echo=True, tail_lines=40):
    """Run ``cmd`` in its own process group, stream its output to stdout and ``log_path``, kill
    the whole group (children, xdist workers) after ``timeout`` s. Returns (rc or "timeout", tail)."""
    logf = open(log_path, "a", buffering=1) if log_path else None
    if logf:
        logf.write(f"$ {' '.join(map(str, cmd))}\n")
    proc = subprocess.Popen([str(c) for c in cmd], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, errors="replace", start_new_session=True)
    tail = []

    def reader():
        for line in proc.stdout:
            tail.append(line.rstrip("\n"))
            del tail[:-tail_lines]
            if echo:
                print("  " + line, end="", flush=True)
            if logf:
                logf.write(line)

    th = threading.Thread(target=reader, daemon=True)
    th.start()
    try:
        proc.wait(max(timeout, 0.1))
        rc = proc.returncode
    except subprocess.TimeoutExpired:
        kill_group(proc)
        rc = "timeout"
    th.join(5)
    if logf:
        logf.write(f"[exit {rc}]\n")
        logf.close()
    return rc, tail


# ---------------------------------------------------------------------------------------------
# 0. environment
# ---------------------------------------------------------------------------------------------
def step_env(args) -> dict:
    import torch
    info = dict(python=sys.version.split()[0], torch=torch.__version__, torch_cuda=torch.version.cuda,
                gpu=torch.cuda.get_device_name() if torch.cuda.is_available() else None, cores=os.cpu_count())
    cuda_home = os.environ.get("CUDA_HOME") or next((c for c in ("/usr/local/cuda", "/usr/cuda")
                                                     if os.path.exists(os.path.join(c, "bin", "nvcc"))), None)
    nvcc = os.path.join(cuda_home, "bin", "nvcc") if cuda_home else shutil.which("nvcc")
    info["cuda_home"] = cuda_home
    info["nvcc"] = None
    if nvcc and os.path.exists(nvcc):
        try:
            v = subprocess.run([nvcc, "--version"], capture_output=True, text=True, timeout=20).stdout
            m = re.search(r"release (\d+)\.(\d+)", v)
            info["nvcc"] = f"{m.group(1)}.{m.group(2)}" if m else v.strip()[-60:]
        except Exception as e:  # noqa: BLE001
            info["nvcc"] = f"error: {e}"
    try:
        import ninja  # noqa: F401
        info["ninja"] = True
    except ImportError:
        info["ninja"] = shutil.which("ninja") is not None
    mismatch = bool(info["nvcc"] and info["torch_cuda"] and re.match(r"\d+", str(info["nvcc"]))
                    and str(info["nvcc"]).split(".")[0] != str(info["torch_cuda"]).split(".")[0])
    info["cuda_build_possible"] = bool(info["nvcc"] and info["torch_cuda"] and not mismatch
                                       and re.match(r"\d+", str(info["nvcc"])))
    log(f"[env] python {info['python']}; torch {info['torch']} (CUDA {info['torch_cuda']}); nvcc {info['nvcc']} "
        f"(CUDA_HOME={cuda_home}); ninja {'yes' if info['ninja'] else 'NO: the build is serial'}; "
        f"GPU {info['gpu']}; {info['cores']} cores")
    if mismatch:
        log(f"[env] nvcc {info['nvcc']} vs torch CUDA {info['torch_cuda']}: major mismatch, torch's cpp_extension "
            "refuses it: CUDA extensions OFF (CPU + Triton fallback)")
    return info


# ---------------------------------------------------------------------------------------------
# 1. build
# ---------------------------------------------------------------------------------------------
def _editable_install(env, timeout, log_path):
    from importlib import metadata
    try:
        d = metadata.distribution("fastdehaze")
        url = json.loads(d.read_text("direct_url.json") or "{}").get("url", "")
        if url.startswith("file://") and pathlib.Path(url[7:]).resolve() == ROOT:
            log("[build] editable install of this checkout present")
            return True
    except metadata.PackageNotFoundError:
        pass
    cmd = [sys.executable, "-m", "pip", "install", "-q", "--no-build-isolation", "--no-deps", "--no-index", "-e",
           str(ROOT)]
    log(f"[build] metadata: FASTDEHAZE_FAMILIES=none {' '.join(cmd)}")
    rc, tail = run_group(cmd, timeout, log_path, env=dict(env, FASTDEHAZE_FAMILIES="none"), echo=False)
    if rc != 0:
        log(f"[build] metadata install failed ({rc}): " + " | ".join(tail[-5:]))
    return rc == 0


def step_build(args, clock, info) -> dict:
    import build_ext as B
    logp = report_dir(args) / "build.log"
    res = dict(status="skipped", families={}, cuda=None, seconds=0.0)
    if args.skip_build:
        log("[build] skipped (--skip-build)")
        return res
    t0 = time.time()
    env = dict(os.environ)
    if info.get("cuda_home"):
        env.setdefault("CUDA_HOME", info["cuda_home"])
    if args.cpu:
        env["FASTDEHAZE_NO_CUDA"] = "1"
        env.pop("FORCE_CUDA", None)
        fams = [args.cpu_family]
        target = args.build_dir
        if not target and not B.up_to_date(args.cpu_family, cuda=False):
            target = tempfile.mkdtemp(prefix="gpu_check_build_")
        log(f"[build] --cpu: family {args.cpu_family}, {'into ' + target if target else 'in place (up to date: a no-op)'}")
    else:
        fams, target = None, args.build_dir
        if info.get("cuda_build_possible"):
            env["FORCE_CUDA"] = "1"
            env.setdefault("TORCH_CUDA_ARCH_LIST", "9.0")
        else:
            env["FASTDEHAZE_NO_CUDA"] = "1"
        if not _editable_install(env, clock.budget(60), logp):
            log("[build] continuing: the tests and benchmarks may not import fastdehaze.kernels")
    # --cpu in place: start setup.py anyway (force), so the dry run goes through the same processes
    results = B.build(fams, out_dir=target, timeout=clock.budget(args.build_seconds), log_file=str(logp), echo=False,
                      env=env, force=args.cpu)
    failed = [f for f, (ok, _, _) in results.items() if not ok]
    if failed and not args.cpu and env.get("FORCE_CUDA") == "1" and clock.budget(args.build_seconds) > 20:
        log(f"[build] FAILED with CUDA: {', '.join(failed)}; rebuilding them with FASTDEHAZE_NO_CUDA=1 "
            "(CPU + Triton fallback). Last lines:")
        for f in failed:
            log("\n".join("    " + s for s in results[f][2][-12:]))
        env2 = dict(env, FASTDEHAZE_NO_CUDA="1")
        env2.pop("FORCE_CUDA", None)
        fams2 = sorted({f.split(":")[0] for f in failed})  # split jobs ("dcp:cuda") -> their family
        again = B.build(fams2, out_dir=target, timeout=clock.budget(args.build_seconds), log_file=str(logp),
                        echo=False, env=env2, split=False)
        for f, r in again.items():
            results[f + " (fallback, no CUDA)"] = r
        res["fallback"] = failed
    for f, (ok, secs, tail) in results.items():
        cuda_line = next((s for s in tail if "CUDA extensions" in s), "")
        log(f"[build] {f}: {'ok' if ok else 'FAIL'} in {secs:.0f}s  {cuda_line.strip()}")
        if not ok:
            log("\n".join("    " + s for s in tail[-15:]))
        res["families"][f] = dict(ok=ok, seconds=round(secs, 1), cuda_line=cuda_line.strip())
    fell_back = {k.split(" ")[0] for k, r in results.items() if k.endswith("(fallback, no CUDA)") and r[0]}
    bad = [k for k, (ok, _, _) in results.items() if not ok]
    res.update(status="ok" if not bad else ("cpu-fallback" if all(k.split(":")[0] in fell_back for k in bad)
                                            else "failed"), seconds=round(time.time() - t0, 1),
               target=target or "in place")
    log(f"[build] {res['status']} in {res['seconds']:.0f}s; log {logp}")
    return res


# ---------------------------------------------------------------------------------------------
# 2. smoke
# ---------------------------------------------------------------------------------------------
def step_smoke(args, clock) -> dict:
    rep = report_dir(args)
    backends = ["cpu", "triton"] if args.cpu else ["cuda", "triton"]
    rows, status = [], {}
    if args.skip_smoke:
        log("[smoke] skipped")
        return dict(status="skipped")
    with tempfile.TemporaryDirectory() as tmp:
        for i, b in enumerate(backends):
            share = clock.budget(args.smoke_seconds) * (1.0 if i == len(backends) - 1 else args.smoke_first_share)
            jp = pathlib.Path(tmp) / f"smoke_{b}.json"
            cmd = [sys.executable, str(ROOT / "benchmarks" / "gpu_smoke.py"), "--backend", b, "--json", jp]
            if args.cpu:
                cmd.append("--cpu")
            log(f"[smoke] {b}: {share:.0f}s")
            rc, _ = run_group(cmd, share, rep / "smoke.log", env=dict(os.environ, PYTHONUNBUFFERED="1"),
                              echo=not args.quiet)
            status[b] = "timeout" if rc == "timeout" else rc
            if jp.exists():
                rows += json.loads(jp.read_text())["rows"]
            if rc == "timeout":
                rows.append(dict(group="-", case="(rest)", backend=b, status="TIMEOUT", seconds=share, detail=""))
            (rep / "smoke.json").write_text(json.dumps(dict(exit=status, rows=rows), indent=1))
    counts = {s: sum(r["status"] == s for r in rows) for s in ("OK", "FAIL", "SKIP", "NOT RUN", "NOT AVAILABLE")}
    log(f"[smoke] {counts}; exits {status}")
    return dict(status=status, counts=counts)


# ---------------------------------------------------------------------------------------------
# 3. tests
# ---------------------------------------------------------------------------------------------
def step_tests(args, clock) -> dict:
    rep = report_dir(args)
    if args.skip_tests:
        log("[tests] skipped")
        return dict(status="skipped")
    junit = rep / "junit.xml"
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--maxfail=200", "-rfE", "--tb=line",
           f"--junitxml={junit}"]
    if args.cpu:
        cmd += args.cpu_tests.split()
    else:
        cmd += ["tests", "-m", "not slow", "-k", args.test_k]
        try:
            import xdist  # noqa: F401
            cmd += ["-n", str(min(8, os.cpu_count() or 1))]
        except ImportError:
            pass
        try:
            import pytest_timeout  # noqa: F401
            cmd += ["--timeout", "60"]
        except ImportError:
            pass
    budget = clock.budget(args.test_seconds)
    log(f"[tests] {' '.join(map(str, cmd))} ({budget:.0f}s)")
    t0 = time.time()
    rc, tail = run_group(cmd, budget, rep / "tests.log", env=dict(os.environ, PYTHONUNBUFFERED="1"),
                         echo=not args.quiet)
    summary = next((s for s in reversed(tail) if re.search(r"\b(passed|failed|error|no tests ran)\b", s)), "")
    res = dict(status="timeout" if rc == "timeout" else rc, summary=summary.strip("= "), seconds=round(time.time() - t0, 1))
    if rc == "timeout" and not junit.exists():
        junit.write_text(f'<?xml version="1.0"?><testsuites><testsuite name="pytest" errors="1" tests="0">'
                         f'<testcase name="timeout"><error message="killed after {budget:.0f}s"/></testcase>'
                         f'</testsuite></testsuites>\n')
    log(f"[tests] {res['status']} in {res['seconds']:.0f}s: {res['summary']}")
    if args.cpu:
        res["kill_check"] = kill_check(rep / "tests.log")
    return res


def kill_check(log_path) -> str:
    """The timeout path: a child that sleeps (and its own child) must be killed, group and all."""
    code = ("import subprocess, sys, time\n"
            "c = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])\n"
            "print('grandchild', c.pid, flush=True)\ntime.sleep(60)\n")
    t0 = time.time()
    rc, tail = run_group([sys.executable, "-c", code], 1.5, log_path, echo=False)
    pid = next((int(s.split()[1]) for s in tail if s.startswith("grandchild")), None)
    time.sleep(0.2)
    alive = pid is not None and _alive(pid)
    ok = rc == "timeout" and pid is not None and not alive and time.time() - t0 < 10
    msg = (f"{'OK' if ok else 'FAIL'}: rc {rc}, grandchild {pid} {'ALIVE' if alive else 'gone'}, "
           f"{time.time() - t0:.1f}s")
    log(f"[tests] kill check {msg}")
    return msg


def _alive(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split()[2] != "Z"
    except FileNotFoundError:
        return False


# ---------------------------------------------------------------------------------------------
# 4. bench
# ---------------------------------------------------------------------------------------------
def _timer(device):
    import torch
    if device == "cuda":
        def run(fn, reps):
            fn()
            torch.cuda.synchronize()
            times = []
            for _ in range(reps):
                s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                s.record()
                fn()
                e.record()
                torch.cuda.synchronize()
                times.append(s.elapsed_time(e) / 1e3)
            return statistics.median(times)
    else:
        def run(fn, reps):
            fn()
            times = []
            for _ in range(reps):
                t0 = time.perf_counter()
                fn()
                times.append(time.perf_counter() - t0)
            return statistics.median(times)
    return run


def copy_bandwidth(device, small) -> float:
    """Bytes read + written per second by a large device-to-device copy."""
    import torch
    n = (64 << 20) if small else (2 << 30)
    a = torch.empty(n // 4, dtype=torch.float32, device=device).uniform_()
    b = torch.empty_like(a)
    t = _timer(device)(lambda: b.copy_(a), 5 if small else 20)
    return 2 * n / t


def bench_modules():
    return sorted(p.stem for p in (ROOT / "benchmarks").glob("bench_*.py") if "def gpu_cases" in p.read_text())


def bench_worker(args) -> int:
    """One family's cases in this process (``--bench-worker MODULE``): the providers of
    ``--providers`` in that order, each case's rows appended to ``--rows-file`` as they come."""
    device = "cpu" if args.cpu else "cuda"
    deadline = args.deadline
    rows_file = pathlib.Path(args.rows_file)
    try:
        mod = importlib.import_module(f"benchmarks.{args.bench_worker}")
        cases = list(mod.gpu_cases(device, args.cpu))
    except Exception as e:  # noqa: BLE001
        log(f"[bench] {args.bench_worker}: gpu_cases failed: {type(e).__name__}: {str(e)[:300]}")
        return 1
    timer = _timer(device)
    provs = args.providers.split(",")
    for case in cases:
        for prov in provs:
            fn = case.providers.get(prov)
            if fn is None or (args.cpu and prov == "triton"):  # the interpreter's time means nothing
                continue
            if time.time() > deadline - (args.compile_min_seconds if prov == "compile" else 1):
                log(f"[bench] {case.name} {prov}: time budget spent, skipped")
                continue
            try:
                t = timer(fn, args.reps)
                row = dict(case=case.name, family=args.bench_worker, provider=prov, ms=t * 1e3,
                           gbs=case.bytes / t / 1e9, bytes=case.bytes)
            except Exception as e:  # noqa: BLE001
                row = dict(case=case.name, family=args.bench_worker, provider=prov, error=f"{type(e).__name__}: "
                           f"{str(e)[:200]}")
                log(f"[bench] {case.name} {prov} failed: {row['error']}")
                if "CUDA error" in str(e) or "illegal" in str(e):
                    with rows_file.open("a") as f:
                        f.write(json.dumps(row) + "\n")
                    return 2  # sticky: this process is poisoned, the parent goes on with the next family
            with rows_file.open("a") as f:
                f.write(json.dumps(row) + "\n")
            if "ms" in row:
                log(f"[bench] {case.name[:48]:48s} {prov:8s} {row['ms']:9.3f} ms {row['gbs']:8.1f} GB/s")
    return 0


def step_bench(args, clock, meta) -> list[dict]:
    import torch
    device = "cpu" if args.cpu else "cuda"
    if device == "cuda" and not torch.cuda.is_available():
        log("[bench] no CUDA device visible: nothing to benchmark (use --cpu for the CPU mode)")
        write_results(args, meta, [])
        return []
    if args.skip_bench:
        log("[bench] skipped")
        write_results(args, meta, [])
        return []
    bw = copy_bandwidth(device, args.cpu)
    meta["copy_gbs"] = bw / 1e9
    log(f"[bench] copy bandwidth {bw / 1e9:.1f} GB/s (read + write); {clock.left():.0f}s left")
    rows: list[dict] = []
    write_results(args, meta, rows)
    mods = bench_modules()
    with tempfile.TemporaryDirectory() as tmp:
        for phase, provs in (("fused+eager", FUSED + EAGER), ("compile", COMPILE)):
            for m in mods:
                left = clock.left() - 2
                if left < (args.compile_min_seconds if phase == "compile" else 5):
                    log(f"[bench] {phase} {m}: no time left ({left:.0f}s), skipped")
                    continue
                rf = pathlib.Path(tmp) / f"{m}_{phase}.jsonl"
                rf.touch()
                cmd = [sys.executable, str(pathlib.Path(__file__).resolve()), "--bench-worker", m, "--providers",
                       ",".join(provs), "--rows-file", rf, "--deadline", str(clock.deadline - 2), "--reps",
                       str(args.reps), "--compile-min-seconds", str(args.compile_min_seconds)]
                if args.cpu:
                    cmd.append("--cpu")
                n_before = len(rows)
                proc_done = threading.Event()

                def follow(rf=rf, base=n_before):
                    seen = 0
                    while True:
                        done = proc_done.is_set()
                        lines = rf.read_text().splitlines()
                        if len(lines) > seen:
                            rows[base:] = [json.loads(s) for s in lines]
                            seen = len(lines)
                            write_results(args, meta, rows)
                        if done:
                            return
                        time.sleep(0.3)

                th = threading.Thread(target=follow, daemon=True)
                th.start()
                rc, _ = run_group(cmd, clock.left() - 1, env=dict(os.environ, PYTHONUNBUFFERED="1"), echo=True)
                proc_done.set()
                th.join(5)
                if rc not in (0,):
                    log(f"[bench] {phase} {m}: worker exit {rc}")
    write_results(args, meta, rows)
    return rows


_RESULT_NAME = {}


def write_results(args, meta, rows):
    """Rewrite <mode>_<stamp>.md/.json (one stamp per run) in results_dir and $OUT."""
    if "name" not in _RESULT_NAME:
        _RESULT_NAME["name"] = f"{'cpu' if args.cpu else 'gpu'}_{datetime.datetime.now().strftime('%Y%m%d-%H%M%S')}"
    name = _RESULT_NAME["name"]
    ok = [r for r in rows if "ms" in r]
    by_case = {}
    for r in ok:
        by_case.setdefault(r["case"], {})[r["provider"]] = r["ms"]
    bw = meta.get("copy_gbs") or 0
    table = []
    for r in ok:
        t = by_case[r["case"]]
        r["pct_copy"] = 100 * r["gbs"] / bw if bw else None
        r["vs_eager"] = t["eager"] / r["ms"] if "eager" in t else None
        r["vs_compile"] = t["compile"] / r["ms"] if "compile" in t else None
        table.append(r)
    f = lambda v: f"{v:.2f}" if v is not None else "-"  # noqa: E731
    lines = [f"# gpu_check {meta['mode']} run {meta['date']}", "",
             f"device: {meta['device']}; torch {meta['torch']}; measured copy bandwidth {bw:.1f} GB/s (read+write)", "",
             f"build: {meta.get('build', {}).get('status')}; smoke: {meta.get('smoke', {}).get('counts')}; "
             f"tests: {meta.get('tests', {}).get('summary') or meta.get('tests', {}).get('status')}", "",
             "| case | provider | ms | GB/s | % copy BW | x eager | x compile |", "|---|---|---|---|---|---|---|"]
    for r in table:
        lines.append(f"| {r['case']} | {r['provider']} | {r['ms']:.3f} | {r['gbs']:.1f} | {f(r['pct_copy'])} | "
                     f"{f(r['vs_eager'])} | {f(r['vs_compile'])} |")
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['case']} | {r['provider']} | FAILED: {r['error'][:120]} | | | | |")
    text = "\n".join(lines) + "\n"
    dirs = [pathlib.Path(args.results_dir)] + ([out_dir()] if out_dir() else [])
    for d in dirs:
        d.mkdir(parents=True, exist_ok=True)
        for suffix, body in ((".md", text), (".json", json.dumps(dict(meta=meta, rows=rows), indent=1))):
            tmp = d / f".{name}{suffix}.tmp"
            tmp.write_text(body)
            os.replace(tmp, d / f"{name}{suffix}")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cpu", action="store_true", help="CPU dry run: same steps, small sizes")
    ap.add_argument("--skip-build", action="store_true", help="rerun on a warm machine: use the built extensions")
    ap.add_argument("--skip-smoke", action="store_true")
    ap.add_argument("--skip-tests", action="store_true")
    ap.add_argument("--skip-bench", action="store_true")
    ap.add_argument("--total-seconds", type=float, default=360, help="one deadline from the script's start")
    ap.add_argument("--build-seconds", type=float, default=150)
    ap.add_argument("--smoke-seconds", type=float, default=50)
    ap.add_argument("--smoke-first-share", type=float, default=0.4, help="share of the smoke budget for cuda")
    ap.add_argument("--test-seconds", type=float, default=80)
    ap.add_argument("--compile-min-seconds", type=float, default=60,
                    help="torch.compile providers run only while more than this is left")
    ap.add_argument("--test-k", default="cuda", help="pytest -k selection on the GPU")
    ap.add_argument("--cpu-tests", default="tests/test_dispatch.py",
                    help="pytest arguments of the --cpu test step")
    ap.add_argument("--cpu-family", default="depth_difference", help="the family --cpu builds")
    ap.add_argument("--build-dir", help="build into this folder (lib/, temp/) instead of in place")
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--quiet", action="store_true", help="do not echo the smoke and test output")
    ap.add_argument("--results-dir", default=str(ROOT / "benchmarks" / "results"))
    # internal: one bench family in this process
    ap.add_argument("--bench-worker", help=argparse.SUPPRESS)
    ap.add_argument("--providers", help=argparse.SUPPRESS)
    ap.add_argument("--rows-file", help=argparse.SUPPRESS)
    ap.add_argument("--deadline", type=float, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.cpu:
        os.environ.setdefault("TRITON_INTERPRET", "1")
        args.reps = min(args.reps, 3)
        args.compile_min_seconds = min(args.compile_min_seconds, 5)
    if args.bench_worker:
        return bench_worker(args)
    clock = Clock(args.total_seconds)
    import torch
    info = step_env(args)
    meta = dict(mode="cpu" if args.cpu else "gpu", device=info["gpu"] or "cpu", torch=torch.__version__, env=info,
                date=datetime.datetime.now().isoformat(timespec="seconds"), copy_gbs=None)
    meta["build"] = step_build(args, clock, info)
    meta["smoke"] = step_smoke(args, clock)
    meta["tests"] = step_tests(args, clock)
    rows = step_bench(args, clock, meta)
    meta["seconds"] = round(time.time() - T0, 1)
    write_results(args, meta, rows)
    log(f"[done] {sum('ms' in r for r in rows)} rows in {time.time() - T0:.0f}s "
        f"(deadline {args.total_seconds:.0f}s); results {_RESULT_NAME.get('name')}")
    bad = meta["build"]["status"] == "failed" or (args.cpu and "FAIL" in meta["tests"].get("kill_check", ""))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
