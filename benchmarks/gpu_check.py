#!/usr/bin/env python3
"""One-shot GPU check: build, GPU tests, benchmarks, one table.

On a machine with a CUDA GPU and no network (the lent H200: torch 2.11, triton 3.6):

    python benchmarks/gpu_check.py            # build (FORCE_CUDA, sm_90), GPU tests, benchmarks

Steps, each with its own time budget so that the whole run ends within about 8 minutes
(machine start-up excluded), printing every result as it comes so that a cut-off run still
reports:

1. build (~3 min budget): ``pip install --no-build-isolation --no-deps -e .`` with
   FORCE_CUDA=1, TORCH_CUDA_ARCH_LIST=9.0 (unless set), MAX_JOBS = core count;
2. GPU tests (~2 min): ``pytest tests`` with the CUDA and GPU-Triton backends enabled
   (tests/conftest.py switches to them when a GPU is visible);
3. benchmarks (~3 min): a device-to-device copy to measure the bandwidth ceiling, then every
   ``gpu_cases()`` of benchmarks/bench_*.py: median time (CUDA events) of the CUDA C++ and
   Triton kernels, eager PyTorch and torch.compile of the eager code; GB/s from each case's
   minimum bytes; % of the measured copy bandwidth; ratios vs eager and torch.compile.

The table goes to stdout, to benchmarks/results/gpu_<date>.md (+ .json) and, when $OUT is set,
under $OUT.

``--cpu`` runs the same steps at small sizes on the CPU (no CUDA build; a short test
selection; the C++ CPU kernel stands in for "cuda"), so the script is exercised by
tests/test_gpu_check.py before a GPU is ever lent.
"""
from __future__ import annotations

import argparse
import datetime
import importlib
import json
import os
import pathlib
import statistics
import subprocess
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]


def log(*a):
    print(*a, flush=True)


def step_build(args) -> bool:
    if args.cpu or args.skip_build:
        log("[build] skipped (%s)" % ("--cpu" if args.cpu else "--skip-build"))
        return True
    env = dict(os.environ)
    env["FORCE_CUDA"] = "1"
    env.setdefault("TORCH_CUDA_ARCH_LIST", "9.0")
    env.setdefault("MAX_JOBS", str(os.cpu_count() or 4))
    if not env.get("CUDA_HOME"):
        for cand in ("/usr/local/cuda", "/usr/cuda"):
            if os.path.exists(os.path.join(cand, "bin", "nvcc")):
                env["CUDA_HOME"] = cand
                break
    cmd = [sys.executable, "-m", "pip", "install", "--no-build-isolation", "--no-deps", "--no-index", "-e", str(ROOT)]
    log(f"[build] {' '.join(cmd)} (CUDA_HOME={env.get('CUDA_HOME')}, MAX_JOBS={env['MAX_JOBS']})")
    t0 = time.time()
    try:
        r = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=args.build_seconds)
    except subprocess.TimeoutExpired:
        log(f"[build] TIMEOUT after {args.build_seconds}s")
        return False
    log(f"[build] exit {r.returncode} in {time.time() - t0:.0f}s")
    if r.returncode != 0:
        log(r.stdout[-3000:], r.stderr[-3000:])
    return r.returncode == 0


def step_tests(args) -> str:
    if args.skip_tests:
        log("[tests] skipped")
        return "skipped"
    sel = ["tests/test_dispatch.py"] if args.cpu else ["tests"]
    cmd = [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", *sel]
    if not args.cpu:
        cmd += ["-m", "not slow"]
        try:  # spread the suite over the cores where pytest-xdist is installed (it is on the H200 image)
            import xdist  # noqa: F401
            cmd += ["-n", str(min(8, os.cpu_count() or 1))]
        except ImportError:
            pass
    log(f"[tests] {' '.join(cmd)}")
    t0 = time.time()
    try:
        r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=args.test_seconds)
        tail = (r.stdout.strip().splitlines() or ["(no output)"])[-1]
        if r.returncode:
            log(r.stdout[-2500:])
        log(f"[tests] exit {r.returncode} in {time.time() - t0:.0f}s: {tail}")
        return tail
    except subprocess.TimeoutExpired as e:
        out = (e.stdout or b"").decode(errors="replace") if isinstance(e.stdout, bytes) else (e.stdout or "")
        log(out[-2000:])
        log(f"[tests] TIMEOUT after {args.test_seconds}s")
        return "timeout"


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
    n = (64 << 20) if small else (2 << 30)  # bytes per buffer
    a = torch.empty(n // 4, dtype=torch.float32, device=device).uniform_()
    b = torch.empty_like(a)
    t = _timer(device)(lambda: b.copy_(a), 5 if small else 20)
    return 2 * n / t


def _cases(device, small):
    sys.path.insert(0, str(ROOT))
    mods = sorted(p.stem for p in (ROOT / "benchmarks").glob("bench_*.py"))
    per_mod = []
    for m in mods:
        try:
            mod = importlib.import_module(f"benchmarks.{m}")
        except Exception as e:  # one broken module must not stop the others
            log(f"[bench] {m}: import failed: {type(e).__name__}: {e}")
            continue
        if not hasattr(mod, "gpu_cases"):
            continue
        try:
            per_mod.append(list(mod.gpu_cases(device, small)))
        except Exception as e:
            log(f"[bench] {m}.gpu_cases failed: {type(e).__name__}: {e}")
    # round-robin over families so that a cut-off run has a bit of everything
    out = []
    while any(per_mod):
        for lst in per_mod:
            if lst:
                out.append(lst.pop(0))
    return out


def step_bench(args, tests_tail) -> list[dict]:
    import torch
    device = "cpu" if args.cpu else "cuda"
    if device == "cuda" and not torch.cuda.is_available():
        log("[bench] no CUDA device visible: nothing to benchmark (use --cpu for the CPU mode)")
        return []
    deadline = time.time() + args.bench_seconds
    bw = copy_bandwidth(device, args.cpu)
    dev_name = torch.cuda.get_device_name() if device == "cuda" else "cpu"
    log(f"[bench] device {dev_name}; torch {torch.__version__}; copy bandwidth {bw / 1e9:.1f} GB/s")
    timer = _timer(device)
    rows = []
    hdr = f"{'case':48s} {'provider':8s} {'ms':>9s} {'GB/s':>8s} {'%copy':>6s} {'x eager':>8s} {'x compile':>9s}"
    log(hdr)
    for case in _cases(device, args.cpu):
        if time.time() > deadline:
            log(f"[bench] time budget spent: skipped {case.name} and later cases")
            break
        res = {}
        for prov in ("eager", "compile", "cuda", "triton"):
            fn = case.providers.get(prov)
            if fn is None:
                continue
            if args.cpu and prov == "triton":
                continue  # the interpreter's time means nothing
            if time.time() > deadline:
                break
            try:
                res[prov] = timer(fn, args.reps)
            except Exception as e:
                log(f"  {case.name}: {prov} failed: {type(e).__name__}: {str(e)[:200]}")
        for prov, t in res.items():
            gbs = case.bytes / t / 1e9
            row = dict(case=case.name, provider=prov, ms=t * 1e3, gbs=gbs, pct_copy=100 * case.bytes / t / bw,
                       vs_eager=res["eager"] / t if "eager" in res else None,
                       vs_compile=res["compile"] / t if "compile" in res else None)
            rows.append(row)
            fmt = lambda v: f"{v:.2f}" if v is not None else "-"  # noqa: E731
            log(f"{case.name[:48]:48s} {prov:8s} {row['ms']:9.3f} {gbs:8.1f} {row['pct_copy']:6.1f} "
                f"{fmt(row['vs_eager']):>8s} {fmt(row['vs_compile']):>9s}")
    meta = dict(device=dev_name, torch=torch.__version__, copy_gbs=bw / 1e9, tests=tests_tail,
                date=datetime.datetime.now().isoformat(timespec="seconds"), mode="cpu" if args.cpu else "gpu")
    write_results(args, meta, rows)
    return rows


def write_results(args, meta, rows):
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    name = f"{'cpu' if args.cpu else 'gpu'}_{stamp}"
    lines = [f"# gpu_check {meta['mode']} run {meta['date']}", "",
             f"device: {meta['device']}; torch {meta['torch']}; measured copy bandwidth {meta['copy_gbs']:.1f} GB/s "
             f"(read+write); tests: {meta['tests']}", "",
             "| case | provider | ms | GB/s | % copy BW | x eager | x compile |", "|---|---|---|---|---|---|---|"]
    f = lambda v: f"{v:.2f}" if v is not None else "-"  # noqa: E731
    for r in rows:
        lines.append(f"| {r['case']} | {r['provider']} | {r['ms']:.3f} | {r['gbs']:.1f} | {r['pct_copy']:.1f} | "
                     f"{f(r['vs_eager'])} | {f(r['vs_compile'])} |")
    text = "\n".join(lines) + "\n"
    dirs = [pathlib.Path(args.results_dir)]
    if os.environ.get("OUT"):
        dirs.append(pathlib.Path(os.environ["OUT"]))
    for d in dirs:
        d.mkdir(parents=True, exist_ok=True)
        (d / f"{name}.md").write_text(text)
        (d / f"{name}.json").write_text(json.dumps(dict(meta=meta, rows=rows), indent=1))
    log(f"[bench] wrote {', '.join(str(d / (name + '.md')) for d in dirs)}")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cpu", action="store_true", help="CPU mode: same steps, small sizes, no CUDA build")
    ap.add_argument("--skip-build", action="store_true")
    ap.add_argument("--skip-tests", action="store_true")
    ap.add_argument("--build-seconds", type=int, default=200)
    ap.add_argument("--test-seconds", type=int, default=120)
    ap.add_argument("--bench-seconds", type=int, default=170)
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--results-dir", default=str(ROOT / "benchmarks" / "results"))
    args = ap.parse_args(argv)
    if args.cpu:
        args.reps = min(args.reps, 3)
    t0 = time.time()
    ok = step_build(args)
    if not ok:
        log("[build] failed: benchmarks run with whatever backends load")
    tail = step_tests(args)
    rows = step_bench(args, tail)
    log(f"[done] {len(rows)} rows in {time.time() - t0:.0f}s")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
