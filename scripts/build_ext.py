#!/usr/bin/env python3
"""Build the fastdehaze extensions, one process per op family, in parallel.

    python3 scripts/build_ext.py                      # every family, in place (fastdehaze/*.so)
    python3 scripts/build_ext.py dcp patch            # only these families
    python3 scripts/build_ext.py --out-dir /tmp/b     # into /tmp/b/lib (nothing in place touched)
    python3 scripts/build_ext.py --log build.log      # also stream every line to a file

Each family runs ``FASTDEHAZE_FAMILIES=<family> python setup.py build_ext --inplace
--build-temp build/<family>`` (its ``_C_`` and, where CUDA is on, ``_cuda_`` extension). That is
incremental: setuptools skips an extension whose .so is newer than its sources, headers and
setup.py (setup.py lists them as ``depends``), and otherwise ninja recompiles only the objects
whose depfile names a changed file. The environment (FORCE_CUDA, FASTDEHAZE_NO_CUDA,
TORCH_CUDA_ARCH_LIST, CUDA_HOME) passes through to setup.py unchanged.

At most ``--parallel`` families build at once (default: min(families, cores)); each gets
MAX_JOBS = max(2, cores // parallel) ninja jobs unless MAX_JOBS is set. The slowest families start
first. Output lines are prefixed ``[family]``; a summary line per family gives ok/FAIL and
seconds. Exit status 0 when every family built, 1 otherwise; ``--timeout`` kills the remaining
builds (their process groups) and counts them as failed.

scripts/setup.sh and benchmarks/gpu_check.py use this; ``build(...)`` is the Python entry point.
"""
from __future__ import annotations

import argparse
import glob
import os
import pathlib
import signal
import subprocess
import sys
import sysconfig
import threading
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
#: measured CPU build seconds on 2 cores (the longest first: longest-processing-time order)
_COST = {"contrastive": 84, "dcp": 38, "filters": 36, "asm": 30, "patch": 23, "depth_difference": 15}


def families() -> list[str]:
    return sorted(pathlib.Path(p).stem for p in glob.glob(str(ROOT / "csrc" / "schemas" / "*.cpp")))


def family_inputs(fam: str) -> list[pathlib.Path]:
    """Every file whose change should make setuptools look at the family's extensions again."""
    files = [ROOT / "setup.py", ROOT / "csrc" / "schemas" / f"{fam}.cpp", ROOT / "csrc" / "cpu" / f"{fam}.cpp",
             ROOT / "csrc" / "cuda" / f"{fam}.cu", ROOT / "csrc" / "cuda" / f"{fam}_register.cpp"]
    files += [pathlib.Path(p) for p in glob.glob(str(ROOT / "csrc" / "include" / "**" / "*.h"), recursive=True)]
    files += [pathlib.Path(p) for p in glob.glob(str(ROOT / "csrc" / "cuda" / "*.cuh"))]
    return [f for f in files if f.exists()]


def up_to_date(fam: str, cuda: bool | None = None) -> bool:
    """True when the family's in-place .so files exist and are newer than all of its inputs
    (``cuda``: also require the ``_cuda_`` one; None: only when one exists already)."""
    suffix = sysconfig.get_config_var("EXT_SUFFIX")
    targets = [ROOT / "fastdehaze" / f"_C_{fam}{suffix}"]
    cu = ROOT / "fastdehaze" / f"_cuda_{fam}{suffix}"
    if cuda or (cuda is None and cu.exists()):
        targets.append(cu)
    if not all(t.exists() for t in targets):
        return False
    newest = max(f.stat().st_mtime for f in family_inputs(fam))
    return min(t.stat().st_mtime for t in targets) >= newest


def _command(job: str, out_dir: str | None) -> list[str]:
    """``job``: a family, or "family:cpu" / "family:cuda" (--split; own build-temp sub-folder, since
    two ninja processes must not share one folder's .ninja_log)."""
    fam, _, part = job.partition(":")
    sub = pathlib.Path(fam) / part if part else pathlib.Path(fam)
    cmd = [sys.executable, "setup.py", "-q", "build_ext"]
    if out_dir:
        cmd += ["--build-lib", str(pathlib.Path(out_dir) / "lib"), "--build-temp", str(pathlib.Path(out_dir) / "temp" / sub)]
    else:
        cmd += ["--inplace", "--build-temp", str(pathlib.Path("build") / sub)]
    return cmd


def _expect_cuda(env) -> bool | None:
    if env.get("FASTDEHAZE_NO_CUDA") == "1":
        return False
    return True if env.get("FORCE_CUDA") == "1" else None


def build(fams=None, *, out_dir=None, parallel=None, timeout=None, log_file=None, echo=True, env=None,
          force=False, split=None) -> dict:
    """Build ``fams`` (default: all) and return {family: (ok, seconds, last_lines)}.

    ``out_dir``: build there instead of in place. ``log_file``: an open text file (or path) every
    output line is appended to as it arrives. ``timeout``: seconds for the whole build; the
    families still running then are killed (process group) and reported as failed. In place, a
    family whose .so files are newer than all of its inputs (:func:`up_to_date`, the check
    setuptools would make) is not started at all (a torch import per family costs ~10 s on 2
    cores), unless ``force``. ``split`` (default: when there are at least two cores per family and
    CUDA is on): each family's CPU and CUDA extension in two processes ("family:cpu",
    "family:cuda"), which halves the critical path on a many-core machine (16 cores, 6 families)."""
    fams = list(fams or families())
    fams.sort(key=lambda f: -_COST.get(f, 30))
    ncpu = os.cpu_count() or 2
    parallel = max(1, min(parallel or ncpu, len(fams) or 1))
    base_env = dict(os.environ if env is None else env)
    base_env.setdefault("MAX_JOBS", str(max(2, ncpu // parallel)))
    base_env["PYTHONUNBUFFERED"] = "1"
    if not base_env.get("CUDA_HOME"):  # torch's guess can pick the pip nvidia headers without crt/
        for cand in ("/usr/local/cuda", "/opt/cuda"):
            if os.path.exists(os.path.join(cand, "bin", "nvcc")):
                base_env["CUDA_HOME"] = cand
                break
    own_log = isinstance(log_file, (str, os.PathLike))
    logf = open(log_file, "a", buffering=1) if own_log else log_file
    lock = threading.Lock()
    t_start = time.time()
    deadline = t_start + timeout if timeout else None

    def emit(line):
        with lock:
            if echo:
                print(line, flush=True)
            if logf:
                logf.write(line + "\n")
                logf.flush()

    if split is None:
        split = ncpu >= 2 * len(fams) and _expect_cuda(base_env) is True
    if split:
        fams = [f"{f}:cpu" for f in fams] + [f"{f}:cuda" for f in fams]
        fams.sort(key=lambda j: -_COST.get(j.split(":")[0], 30))
        parallel = max(1, min(2 * parallel, len(fams)))
    emit(f"[build_ext] families {', '.join(fams)}; {parallel} at a time, MAX_JOBS={base_env['MAX_JOBS']} each; "
         f"{'out-dir ' + str(out_dir) if out_dir else 'in place'}")
    results, running, queue = {}, {}, list(fams)
    if not out_dir and not force:
        fresh = [f for f in fams if ":" not in f and up_to_date(f, _expect_cuda(base_env))]
        for f in fresh:
            results[f] = (True, 0.0, ["up to date"])
            emit(f"[build_ext] {f}: up to date (no process started)")
        queue = [f for f in fams if f not in fresh]

    def reader(fam, proc, tail):
        for line in proc.stdout:
            line = line.rstrip("\n")
            tail.append(line)
            del tail[:-40]
            emit(f"[{fam}] {line}")

    while queue or running:
        while queue and len(running) < parallel:
            fam = queue.pop(0)
            e = dict(base_env, FASTDEHAZE_FAMILIES=fam.split(":")[0])
            if ":" in fam:
                e["FASTDEHAZE_PARTS"] = fam.split(":")[1]
            proc = subprocess.Popen(_command(fam, out_dir), cwd=ROOT, env=e, stdout=subprocess.PIPE,
                                    stderr=subprocess.STDOUT, text=True, errors="replace", start_new_session=True)
            tail: list[str] = []
            th = threading.Thread(target=reader, args=(fam, proc, tail), daemon=True)
            th.start()
            running[fam] = (proc, th, tail, time.time())
        time.sleep(0.05)
        for fam, (proc, th, tail, t0) in list(running.items()):
            if proc.poll() is None:
                if deadline and time.time() > deadline:
                    kill_group(proc)
                    th.join(5)
                    results[fam] = (False, time.time() - t0, tail + ["TIMEOUT: killed"])
                    emit(f"[build_ext] {fam}: TIMEOUT after {time.time() - t0:.0f}s (killed)")
                    del running[fam]
                continue
            th.join(5)
            ok = proc.returncode == 0
            results[fam] = (ok, time.time() - t0, tail)
            emit(f"[build_ext] {fam}: {'ok' if ok else 'FAIL (exit %d)' % proc.returncode} in {time.time() - t0:.1f}s")
            del running[fam]
        if deadline and time.time() > deadline and queue:
            for fam in queue:
                results[fam] = (False, 0.0, ["TIMEOUT: not started"])
                emit(f"[build_ext] {fam}: TIMEOUT (not started)")
            queue = []
    emit(f"[build_ext] {sum(ok for ok, _, _ in results.values())}/{len(fams)} families ok in {time.time() - t_start:.1f}s")
    if own_log:
        logf.close()
    return results


def kill_group(proc: subprocess.Popen, grace: float = 3.0) -> None:
    """SIGTERM the process group of ``proc`` (started with start_new_session=True), then SIGKILL."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("families", nargs="*", help="families to build (default: all)")
    ap.add_argument("--out-dir", help="build into OUT_DIR/lib and OUT_DIR/temp instead of in place")
    ap.add_argument("--parallel", type=int, help="families built at once (default: min(families, cores))")
    ap.add_argument("--timeout", type=float, help="seconds for the whole build")
    ap.add_argument("--log", help="append every output line to this file")
    ap.add_argument("--quiet", action="store_true", help="print only the summary lines")
    ap.add_argument("--force", action="store_true", help="start setup.py even for families that look up to date")
    ap.add_argument("--split", action=argparse.BooleanOptionalAction, default=None,
                    help="one process per extension instead of per family (default: on with >= 2 cores per family "
                         "and FORCE_CUDA=1)")
    a = ap.parse_args(argv)
    unknown = sorted(set(a.families) - set(families()))
    if unknown:
        ap.error(f"unknown families {unknown}; known: {families()}")
    res = build(a.families or None, out_dir=a.out_dir, parallel=a.parallel, timeout=a.timeout, log_file=a.log,
                echo=not a.quiet, force=a.force, split=a.split)
    if a.quiet:
        for fam, (ok, secs, tail) in res.items():
            print(f"[build_ext] {fam}: {'ok' if ok else 'FAIL'} in {secs:.1f}s", flush=True)
            if not ok:
                print("\n".join(tail[-25:]), flush=True)
    return 0 if all(ok for ok, _, _ in res.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
