#!/usr/bin/env python3
"""ptxas resource usage of every CUDA kernel (per template instantiation) for sm_90.

Compiles each csrc/cuda/<family>.cu with the nvcc flags of setup.py (plus the flags torch's
build adds for .cu files: its COMMON_NVCC_FLAGS, --expt-relaxed-constexpr via them, and
``-gencode arch=compute_90,code=sm_90``) and ``-Xptxas -v``, parses what ptxas reports per entry
function (registers, stack frame, spill stores/loads, static shared memory, barriers) and writes
benchmarks/results/cuda_ptxas_sm90.json. (The toolkit here has no cuobjdump, so the built
_cuda_*.so files are not read; tests/test_cuda_resources.py checks that the JSON's kernels are
those of the built extensions and that its source hashes match csrc/.)

Usage: python3 scripts/cuda_resources.py [--jobs N] [--out PATH]
Needs nvcc (CUDA_HOME or /usr/local/cuda); no GPU.
"""
import argparse
import concurrent.futures as cf
import hashlib
import json
import os
import pathlib
import re
import shutil
import subprocess
import sys
import tempfile

ROOT = pathlib.Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "results" / "cuda_ptxas_sm90.json"
ARCH = "sm_90"
# kernels whose dynamic shared memory comes on top of the static figure (bytes, at most)
DYNAMIC_SMEM = {"patch_scores_kernel": 48 * 1024}
_GLOBAL_NS = re.compile(r"(\d+)_GLOBAL__N__")


def normalise_mangled(name):
    """Drops the per-translation-unit anonymous namespace component of a mangled name
    (``<len>_GLOBAL__N__<hash>``), which differs between two compilations of one file."""
    out, i = [], 0
    while True:
        m = _GLOBAL_NS.search(name, i)
        if not m:
            out.append(name[i:])
            return "".join(out)
        out.append(name[i:m.start()])
        i = m.start() + len(m.group(1)) + int(m.group(1))


def nvcc_path():
    home = os.environ.get("CUDA_HOME", "/usr/local/cuda")
    p = pathlib.Path(home) / "bin" / "nvcc"
    return str(p) if p.exists() else shutil.which("nvcc")


def setup_nvcc_flags():
    """The "nvcc" flag list of setup.py (kept in sync by reading it)."""
    m = re.search(r'"nvcc":\s*\[([^\]]*)\]', (ROOT / "setup.py").read_text())
    if not m:
        sys.exit("cuda_resources: no nvcc flag list found in setup.py")
    return re.findall(r'"([^"]+)"', m.group(1))


def torch_nvcc_flags():
    try:
        from torch.utils.cpp_extension import COMMON_NVCC_FLAGS
        return list(COMMON_NVCC_FLAGS)
    except Exception:  # torch missing: the flags torch 2.x adds
        return ["-D__CUDA_NO_HALF_OPERATORS__", "-D__CUDA_NO_HALF_CONVERSIONS__",
                "-D__CUDA_NO_BFLOAT16_CONVERSIONS__", "-D__CUDA_NO_HALF2_OPERATORS__", "--expt-relaxed-constexpr"]


def included_headers(path, seen=None):
    """fastdehaze/*.h headers a source includes, transitively."""
    seen = set() if seen is None else seen
    for inc in re.findall(r'#include "([^"]+)"', path.read_text()):
        for base in (path.parent, ROOT / "csrc" / "include"):
            q = (base / inc).resolve()
            if q.exists() and q not in seen:
                seen.add(q)
                included_headers(q, seen)
                break
    return seen


def source_hashes(cu):
    files = [cu] + sorted(included_headers(cu))
    return {str(f.relative_to(ROOT)): hashlib.sha256(f.read_bytes()).hexdigest() for f in files}


def demangle(names):
    if not names or not shutil.which("c++filt"):
        return {n: n for n in names}
    r = subprocess.run(["c++filt"], input="\n".join(names), capture_output=True, text=True, check=True)
    return dict(zip(names, r.stdout.splitlines()))


def short_name(demangled):
    s = demangled.replace("fastdehaze::(anonymous namespace)::", "").replace("fastdehaze::", "")
    return s.split("(")[0].replace("void ", "")


def parse_ptxas(text):
    kernels, cur = {}, None
    for line in text.splitlines():
        m = re.search(r"Compiling entry function '([^']+)' for '(sm_\d+)'", line)
        if m:
            cur = m.group(1)
            kernels[cur] = dict(registers=0, stack_frame=0, spill_stores=0, spill_loads=0, shared_bytes=0,
                                barriers=0)
            continue
        if cur is None:
            continue
        m = re.search(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads", line)
        if m:
            kernels[cur].update(stack_frame=int(m.group(1)), spill_stores=int(m.group(2)),
                                spill_loads=int(m.group(3)))
        m = re.search(r"Used (\d+) registers", line)
        if m:
            kernels[cur]["registers"] = int(m.group(1))
            b = re.search(r"used (\d+) barriers", line)
            s = re.search(r"(\d+) bytes smem", line)
            kernels[cur]["barriers"] = int(b.group(1)) if b else 0
            kernels[cur]["shared_bytes"] = int(s.group(1)) if s else 0
    return kernels


def compile_family(cu, nvcc, flags):
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [nvcc, *flags, "-I", str(ROOT / "csrc" / "include"), "-c", str(cu), "-o",
               os.path.join(tmp, cu.stem + ".o"), "-Xptxas", "-v"]
        r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode:
        raise RuntimeError(f"nvcc failed for {cu.name}:\n{r.stderr[-4000:]}")
    return parse_ptxas(r.stderr + r.stdout)


def threads_of(name):
    """Block size of a kernel's launches (fastdehaze/grid.h plans, the fixed launches)."""
    if name.startswith(("atmo_take_kernel", "atmo_digit_kernel", "ddl_loss_kernel")):
        return 1024
    if name.startswith("atmo_scan_kernel"):
        return 32
    if name.startswith("contrastive_finalize_kernel"):
        return 32
    return 256


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--out", default=str(OUT))
    args = ap.parse_args()
    nvcc = nvcc_path()
    if not nvcc:
        sys.exit("cuda_resources: nvcc not found (set CUDA_HOME)")
    version = subprocess.run([nvcc, "--version"], capture_output=True, text=True).stdout.strip().splitlines()[-1]
    flags = setup_nvcc_flags() + torch_nvcc_flags() + [f"-gencode=arch=compute_90,code={ARCH}"]
    cus = sorted((ROOT / "csrc" / "cuda").glob("*.cu"))
    with cf.ThreadPoolExecutor(args.jobs) as ex:
        results = dict(zip(cus, ex.map(lambda c: compile_family(c, nvcc, flags), cus)))
    rows, sources = [], {}
    for cu, kernels in results.items():
        sources.update(source_hashes(cu))
        names = demangle(sorted(kernels))
        for mangled in sorted(kernels):
            k = kernels[mangled]
            short = short_name(names[mangled])
            base = short.split("<")[0]
            row = dict(family=cu.stem, kernel=short, mangled=normalise_mangled(mangled), **k,
                       threads=threads_of(base))
            if base in DYNAMIC_SMEM:
                row["dynamic_shared_max_bytes"] = DYNAMIC_SMEM[base]
            rows.append(row)
    rows.sort(key=lambda r: (r["family"], r["kernel"]))
    summary = dict(
        kernels=len(rows),
        max_registers=max(r["registers"] for r in rows),
        max_registers_kernel=max(rows, key=lambda r: r["registers"])["kernel"],
        kernels_with_spills=[r["kernel"] for r in rows if r["spill_stores"] or r["spill_loads"]],
        kernels_with_stack=[r["kernel"] for r in rows if r["stack_frame"]],
        max_static_shared_bytes=max(r["shared_bytes"] for r in rows),
    )
    doc = dict(arch=ARCH, nvcc=version, flags=flags, generator="scripts/cuda_resources.py", summary=summary,
               sources=sources, kernels=rows)
    pathlib.Path(args.out).write_text(json.dumps(doc, indent=1) + "\n")
    print(f"{len(rows)} kernels -> {args.out}; max registers {summary['max_registers']} "
          f"({summary['max_registers_kernel']}); spills: {summary['kernels_with_spills'] or 'none'}")


if __name__ == "__main__":
    main()
