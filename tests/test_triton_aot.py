"""Every Triton kernel the launchers reach, compiled for sm_90 (H200) without a GPU.

The interpreter (TRITON_INTERPRET=1, how every other test runs Triton here) executes the kernels
as Python and never runs Triton's code generator: a non-constexpr global, ``.to()`` on an int
that Triton specialises to a constexpr (ints equal to 1), a grid axis over 65535 or a kernel
over the register file only show when compiling for a GPU. This test does that, in a subprocess
without TRITON_INTERPRET:

1. capture: ``JITFunction.run`` is replaced by a recorder ``(kernel, grid, args, kwargs)`` that
   launches nothing, and the public ops are called with ``backend="triton"`` on small CPU
   tensors (the Triton CPU-tensor check is bypassed, ``torch.empty`` gives zeros so that host
   code reading kernel outputs stays in range), forward and backward, in every dtype an op
   accepts (float16, bfloat16, float32, float64), on a generic shape and on shapes that make
   the GPU's specialisations (ints equal to 1 become constexpr, sizes divisible by 16 get a
   divisibility attribute) and a batch that a 2-D grid could not hold;
2. each record is specialised by Triton's own binder for ``GPUTarget("cuda", 90, 32)`` (the
   signature, constexprs and attributes a GPU launch would get), deduplicated, and compiled to
   a cubin with ``triton.compile(ASTSource(...))`` in a pool of 2 processes, with an empty
   Triton cache (nothing cached across runs);
3. it fails on a compile error, on a grid axis over the GPU limit, on a ``@triton.jit``
   function of kernels/ that no launch reached (directly or as a callee), on shared memory over
   227 KiB, on registers x threads over 65536 per block, on any register spill, and writes
   benchmarks/results/triton_aot_sm90.json (kernel, dtypes, registers, spills, shared memory,
   num_warps per configuration; registers and spills from ptxas -v, which Triton runs).

With triton 3.6 (the GPU machine's version) installed beside the test environment
(``pip install --no-deps --target /tmp/triton36 triton==3.6.0``, or FASTDEHAZE_TRITON36=<dir>),
the same runs with it first on sys.path; otherwise that test is skipped.

Run by hand: ``python3 tests/test_triton_aot.py --worker OUT.json [--triton-path DIR]``
(``FASTDEHAZE_AOT_CASES=<regex>`` keeps only the matching cases).
"""
from __future__ import annotations

import json
import os
import pathlib
import re
import subprocess
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
RESULT = ROOT / "benchmarks" / "results" / "triton_aot_sm90.json"
TRITON36 = pathlib.Path(os.environ.get("FASTDEHAZE_TRITON36", "/tmp/triton36"))

SMEM_LIMIT = 232448        # 227 KiB of shared memory per block on sm_90
REGS_PER_BLOCK = 65536     # 64 Ki 32-bit registers per SM / block
GRID_LIMITS = (2 ** 31 - 1, 65535, 65535)
WORKER_TIMEOUT = 570


# ---- worker: capture --------------------------------------------------------------------------

def _capture():
    """[(JITFunction, grid, args, kwargs, case label, dtype name)] of every launch the cases make."""
    import functools

    import torch
    from triton.runtime.jit import JITFunction

    records = []
    label = {"case": None, "dtype": None}

    def record(self, *args, grid, warmup, **kwargs):
        records.append((self, grid, args, kwargs, label["case"], label["dtype"]))
        return None

    JITFunction.run = record

    # zeros instead of uninitialised memory: host code that reads kernel outputs (indices) stays valid
    torch.empty = functools.partial(_zeros, torch.zeros)
    torch.empty_like = functools.partial(_zeros, torch.zeros_like)
    torch.Tensor.new_empty = torch.Tensor.new_zeros

    import fastdehaze._ext as ext
    import fastdehaze.ops as F
    from fastdehaze.ops import _dispatch

    ext.triton_ready = lambda device_type: (True, "")       # backend="triton" on CPU tensors
    _dispatch._check_triton_device = lambda op_name, dev: None
    F.set_value_checks(False)

    failures = []
    only = os.environ.get("FASTDEHAZE_AOT_CASES")  # a regex, for runs by hand (then kernels go unreached)
    for name, dtype, fn in _cases(torch, F):
        if only and not re.search(only, name):
            continue
        label.update(case=name, dtype=str(dtype).replace("torch.", ""))
        try:
            fn()
        except Exception as e:  # a launcher that fails before reaching its kernel
            failures.append(f"{name} [{label['dtype']}]: {type(e).__name__}: {e}")
    return records, failures


def _zeros(factory, *args, **kwargs):
    return factory(*args, **kwargs)


def _cases(torch, F):
    """(name, dtype, thunk) per launcher configuration to reach. Shapes: G generic (odd sizes,
    B=2, C=3); S the GPU specialisations (ints equal to 1: B=C=H=W=1, patch=1, N=1; sizes
    divisible by 16): S1 in float32 and float64, S16 in float32; L a batch over 65535 (grid
    axis 1 would overflow)."""
    dtypes = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
    out = []

    def add(name, dts, fn):
        for dt in dts:
            out.append((name, dt, (lambda dt=dt: fn(dt))))

    def img(B, C, H, W, dt, grad=False):
        return torch.rand(B, C, H, W, dtype=dt).requires_grad_(grad)

    def bwd(*ys):
        torch.autograd.backward([y.float().sum() for y in ys if y.requires_grad])

    shapes = {"G": (2, 3, 17, 19), "S1": (1, 1, 1, 1), "S16": (1, 3, 16, 32)}
    shape_dtypes = {"G": dtypes, "S1": (torch.float32, torch.float64), "S16": (torch.float32,)}

    for sname, (B, C, H, W) in shapes.items():
        dts = shape_dtypes[sname]
        # asm
        for clamp in (None, (0.1, 0.9)):
            for tc in (1, C):
                add(f"recover {sname} clamp={clamp} t{tc}", dts, lambda dt, tc=tc, clamp=clamp: bwd(F.recover(
                    img(B, C, H, W, dt, True), img(B, tc, H, W, dt, True), img(B, C, 1, 1, dt, True), 0.1,
                    clamp=clamp, backend="triton")))
        for mc in (1, C):
            add(f"synthesize_haze t {sname} {mc}", dts, lambda dt, mc=mc: bwd(F.synthesize_haze(
                img(B, C, H, W, dt, True), img(B, C, 1, 1, dt, True), t=img(B, mc, H, W, dt, True),
                backend="triton")))
            add(f"synthesize_haze depth {sname} {mc}", dts, lambda dt, mc=mc: bwd(F.synthesize_haze(
                img(B, C, H, W, dt, True), img(B, C, 1, 1, dt, True), depth=img(B, mc, H, W, dt, True),
                beta=img(B, C, 1, 1, dt, True), backend="triton")))
            add(f"transmission_from_depth {sname} {mc}", dts, lambda dt, mc=mc: bwd(F.transmission_from_depth(
                img(B, mc, H, W, dt, True), img(B, C, 1, 1, dt, True), backend="triton")))
            add(f"recompose_k {sname} {mc}", dts, lambda dt, mc=mc: bwd(F.recompose_k(
                img(B, C, H, W, dt, True), img(B, mc, H, W, dt, True), img(B, C, 1, 1, dt, True),
                backend="triton")))
        # dcp (patch 1 and 3; the pipeline reaches atmospheric_light, transmission, guided filter, recover)
        for patch in ((1, 3) if sname != "S1" else (1,)):
            add(f"dark_channel {sname} p{patch}", dts, lambda dt, patch=patch: bwd(F.dark_channel(
                img(B, C, H, W, dt, True), patch, backend="triton")))
            add(f"bright_channel {sname} p{patch}", dts, lambda dt, patch=patch: bwd(F.bright_channel(
                img(B, C, H, W, dt, True), patch, backend="triton")))
            add(f"transmission {sname} p{patch}", dts, lambda dt, patch=patch: F.transmission(
                img(B, C, H, W, dt), img(B, C, 1, 1, dt), 0.95, patch, backend="triton"))
            add(f"dehaze_dcp {sname} p{patch}", dts, lambda dt, patch=patch: F.dehaze_dcp(
                img(B, C, H, W, dt), patch=patch, r=1, backend="triton"))
        add(f"atmospheric_light {sname}", dts, lambda dt: F.atmospheric_light(
            img(B, C, H, W, dt), patch=1, backend="triton"))
        # filters
        add(f"box_filter {sname}", dts, lambda dt: bwd(F.box_filter(img(B, C, H, W, dt, True), 2, backend="triton")))
        for g in ((1, 3) if C == 3 else (1,)):
            add(f"guided_filter {sname} guide{g}", dts, lambda dt, g=g: F.guided_filter(
                img(B, g, H, W, dt), img(B, C, H, W, dt), 1, 1e-3, backend="triton"))
        # patch
        p = 1 if sname == "S1" else 4
        for measure in (("luma", "mean", "dark", "max") if sname == "G" else ("luma",)):
            add(f"patch_brightness_rank {sname} {measure}", dts, lambda dt, measure=measure: F.patch_brightness_rank(
                img(B, C, H, W, dt), patch=p, k=1, measure=measure, backend="triton"))
        for pp in ((1, p) if p != 1 else (1,)):
            add(f"gather_patches {sname} p{pp}", dts, lambda dt, pp=pp: bwd(F.gather_patches(
                img(B, C, H, W, dt, True), torch.zeros(B, 2, 2, dtype=torch.int64), pp, backend="triton")))
        # contrastive (K = 1 and 3; ablation; N = numel of the layer)
        for K in (1, 3):
            add(f"contrastive_distance {sname} K{K}", dts, lambda dt, K=K: bwd(F.contrastive_distance(
                img(B, C, H, W, dt, True), img(B, C, H, W, dt), img(K, B * C, H, W, dt).reshape(K, B, C, H, W),
                backend="triton")))
        add(f"contrastive_distance {sname} ablation", dts, lambda dt: bwd(F.contrastive_distance(
            img(B, C, H, W, dt, True), img(B, C, H, W, dt), None, ablation=True, backend="triton")))
        add(f"contrastive_loss {sname}", dts, lambda dt: bwd(F.contrastive_loss(
            [img(B, C, H, W, dt, True), img(B, 2 * C, H, W, dt, True)], [img(B, C, H, W, dt), img(B, 2 * C, H, W, dt)],
            [[img(B, C, H, W, dt)], [img(B, 2 * C, H, W, dt)]], layer_weights=(0.5, 1.0), backend="triton")))
        # depth_difference
        for normalize in (False, True):
            add(f"difference_perception_weight {sname} n={normalize}", dts, lambda dt, normalize=normalize: bwd(
                F.difference_perception_weight(img(B, C, H, W, dt, True), normalize=normalize, backend="triton")))
        add(f"depth_difference_loss {sname}", dts, lambda dt: bwd(F.depth_difference_loss(
            img(B, C, H, W, dt, True), img(B, C, H, W, dt, True), img(B, 1, H, W, dt, True), img(B, 1, H, W, dt, True),
            backend="triton")))
    # L: more images x channels than a grid axis 1 holds (B*C = 65536 planes of 1 pixel)
    f32 = (torch.float32,)
    add("gather_patches L", f32, lambda dt: F.gather_patches(img(1, 65536, 1, 1, dt), torch.zeros(1, 1, 2, dtype=torch.int64),
                                                             1, backend="triton"))
    add("recover L", f32, lambda dt: F.recover(img(65536, 1, 1, 2, dt), img(65536, 1, 1, 2, dt),
                                               img(65536, 1, 1, 1, dt), 0.1, backend="triton"))
    add("guided_filter L", f32, lambda dt: F.guided_filter(img(65536, 1, 1, 2, dt), img(65536, 1, 1, 2, dt), 1, 1e-3,
                                                           backend="triton"))
    return out


# ---- worker: specialise, compile, check -----------------------------------------------------

def _specialise(records):
    """Unique configurations {key: dict(fn, signature, constexprs, attrs, options, dtypes, cases)}
    as Triton's binder makes them for sm_90, and the grid-limit violations."""
    from triton.backends.compiler import GPUTarget
    from triton.compiler.compiler import make_backend
    from triton.runtime.jit import create_function_from_signature

    target = GPUTarget("cuda", 90, 32)
    backend = make_backend(target)
    binders = {}
    configs, grid_errors = {}, []
    for fn, grid, args, kwargs, case, dtype in records:
        g = tuple(grid) + (1,) * (3 - len(grid))
        for ax, (n, lim) in enumerate(zip(g, GRID_LIMITS)):
            if n > lim:
                grid_errors.append(f"{fn.__name__} ({case} [{dtype}]): grid axis {ax} = {n} > {lim}")
        if id(fn) not in binders:
            binders[id(fn)] = create_function_from_signature(fn.signature, fn.params, backend)
        kw = dict(kwargs)
        kw.setdefault("debug", False)
        bound, specialization, options = binders[id(fn)](*args, **kw)
        options, signature, constexprs, attrs = fn._pack_args(backend, kw, bound, specialization, options)
        key = repr((fn.__module__, fn.__name__, sorted(signature.items()), sorted(constexprs.items(), key=repr),
                    sorted(attrs.items(), key=repr), sorted(options.__dict__.items(), key=repr)))
        c = configs.setdefault(key, dict(fn=fn, signature=signature, constexprs=constexprs, attrs=attrs,
                                         options=options.__dict__, dtypes=set(), cases=set()))
        c["dtypes"].add(dtype)
        c["cases"].add(case)
    return configs, grid_errors


_CONFIGS: list = []


def _compile_one(i):
    """Compile configuration i for sm_90; returns a result dict (error text on failure)."""
    import contextlib
    import io

    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    c = _CONFIGS[i]
    fn = c["fn"]
    res = dict(kernel=f"{fn.__module__.split('.')[-1]}.{fn.__name__}", dtypes=sorted(c["dtypes"]),
               signature={k: v for k, v in c["signature"].items() if v != "constexpr"},
               constexprs={str(k[0] if len(k) == 1 else k): _short(v) for k, v in c["constexprs"].items()},
               case=sorted(c["cases"])[0])
    log = io.StringIO()
    t = time.time()
    try:
        with contextlib.redirect_stdout(log):
            k = triton.compile(ASTSource(fn, c["signature"], c["constexprs"], c["attrs"]),
                               target=GPUTarget("cuda", 90, 32), options=c["options"])
    except Exception as e:
        res["error"] = f"{type(e).__name__}: {e}"[:4000]
        return res
    md = k.metadata
    res.update(num_warps=md.num_warps, num_stages=md.num_stages, shared=md.shared, seconds=round(time.time() - t, 2))
    text = log.getvalue()
    regs = re.search(r"Used (\d+) registers", text)
    if regs is None:  # no ptxas log (another triton version): ptxas -v on the PTX
        text = _ptxas_v(k.asm["ptx"])
        regs = re.search(r"Used (\d+) registers", text)
    res["registers"] = int(regs.group(1)) if regs else None
    st = re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", text)
    res["spill_stores"], res["spill_loads"] = (int(st.group(1)), int(st.group(2))) if st else (None, None)
    sf = re.search(r"(\d+) bytes stack frame", text)
    res["stack_frame"] = int(sf.group(1)) if sf else None
    return res


def _short(v):
    v = getattr(v, "value", v)
    return v if isinstance(v, (int, float, bool, str)) or v is None else repr(v)


def _ptxas_v(ptx):
    ptxas = "/usr/local/cuda/bin/ptxas"
    with tempfile.NamedTemporaryFile("w", suffix=".ptx", delete=False) as f:
        f.write(ptx)
    try:
        r = subprocess.run([ptxas, "-v", "--gpu-name=sm_90", f.name, "-o", os.devnull], capture_output=True,
                           text=True, timeout=120)
        return r.stderr + r.stdout
    except (OSError, subprocess.TimeoutExpired) as e:
        return str(e)
    finally:
        os.unlink(f.name)


def _jit_functions():
    """{module.name: JITFunction} of every @triton.jit function in fastdehaze.kernels.*."""
    import importlib
    import pkgutil

    from triton.runtime.jit import JITFunction

    import fastdehaze.kernels as pkg
    out = {}
    mods = [pkg] + [importlib.import_module(f"fastdehaze.kernels.{m.name}") for m in pkgutil.iter_modules(pkg.__path__)]
    for mod in mods:
        for name, v in vars(mod).items():
            if isinstance(v, JITFunction) and v.__module__ == mod.__name__:
                out[f"{mod.__name__}.{name}"] = v
    return out


def _unreached(launched):
    """The @triton.jit functions of kernels/ that no launched kernel reaches (transitively)."""
    funcs = _jit_functions()
    by_name = {}
    for full, f in funcs.items():
        by_name.setdefault(f.__name__, []).append(full)
    reached, todo = set(), [f"{f.__module__}.{f.__name__}" for f in launched]
    while todo:
        full = todo.pop()
        if full in reached or full not in funcs:
            continue
        reached.add(full)
        src = funcs[full].src
        for name, fulls in by_name.items():
            if re.search(rf"\b{re.escape(name)}\s*\(", src):
                todo.extend(fulls)
    return sorted(set(funcs) - reached)


def worker(out_path, triton_path=None):
    if triton_path:
        sys.path.insert(0, triton_path)
    os.environ.pop("TRITON_INTERPRET", None)
    os.environ["TRITON_DUMP_PTXAS_LOG"] = "1"
    t0 = time.time()
    import triton
    if triton_path:
        assert triton.__file__.startswith(triton_path), triton.__file__
    records, case_failures = _capture()
    t_cap = time.time() - t0
    configs, grid_errors = _specialise(records)
    _CONFIGS.extend(configs.values())
    import multiprocessing as mp
    with mp.get_context("fork").Pool(2) as pool:
        results = pool.map(_compile_one, range(len(_CONFIGS)), chunksize=1)
    launched = {id(c["fn"]): c["fn"] for c in _CONFIGS}.values()
    unreached = _unreached(launched)
    errors = [f"{r['kernel']} {r['dtypes']} ({r['case']}; constexprs {r['constexprs']}): {r['error']}"
              for r in results if "error" in r]
    limits = []
    for r in results:
        if "error" in r:
            continue
        if r["shared"] > SMEM_LIMIT:
            limits.append(f"{r['kernel']} {r['dtypes']}: shared memory {r['shared']} B > {SMEM_LIMIT}")
        if (r["spill_stores"] or 0) + (r["spill_loads"] or 0) > 0:
            limits.append(f"{r['kernel']} {r['dtypes']} ({r['case']}): spills {r['spill_stores']} B stored, "
                          f"{r['spill_loads']} B loaded (local memory)")
        if r["registers"] is None:
            limits.append(f"{r['kernel']} {r['dtypes']}: no register count from ptxas")
        elif r["registers"] * 32 * r["num_warps"] > REGS_PER_BLOCK:
            limits.append(f"{r['kernel']} {r['dtypes']}: {r['registers']} registers x {32 * r['num_warps']} threads "
                          f"> {REGS_PER_BLOCK}")
    report = dict(
        triton=triton.__version__, target="cuda sm_90 (GPUTarget('cuda', 90, 32))",
        kernels=len({r["kernel"] for r in results}), configurations=len(results), launches_recorded=len(records),
        capture_seconds=round(t_cap, 1), total_seconds=round(time.time() - t0, 1),
        max_registers=max((r["registers"] or 0 for r in results if "error" not in r), default=0),
        max_spill_bytes=max(((r["spill_stores"] or 0) + (r["spill_loads"] or 0) for r in results if "error" not in r),
                            default=0),
        max_shared=max((r["shared"] for r in results if "error" not in r), default=0),
        compile_errors=errors, case_failures=case_failures, grid_errors=sorted(set(grid_errors)), limit_errors=limits,
        unreached_kernels=unreached, results=sorted(results, key=lambda r: (r["kernel"], r["dtypes"], repr(r["constexprs"]))))
    pathlib.Path(out_path).write_text(json.dumps(report, indent=1, default=str) + "\n")


# ---- the tests --------------------------------------------------------------------------------

def _run(tmp_path, triton_path=None):
    out = tmp_path / "aot.json"
    env = dict(os.environ)
    env.pop("TRITON_INTERPRET", None)
    env["TRITON_CACHE_DIR"] = str(tmp_path / "triton-cache")  # empty: no kernel from an earlier run
    env["CUDA_VISIBLE_DEVICES"] = ""
    cmd = [sys.executable, str(pathlib.Path(__file__).resolve()), "--worker", str(out)]
    if triton_path:
        cmd += ["--triton-path", str(triton_path)]
    r = subprocess.run(cmd, env=env, cwd=str(ROOT), capture_output=True, text=True, timeout=WORKER_TIMEOUT)
    assert r.returncode == 0 and out.exists(), f"AOT worker failed (rc {r.returncode}):\n{r.stdout[-4000:]}\n{r.stderr[-8000:]}"
    return json.loads(out.read_text())


def _check(rep):
    problems = []
    for key in ("compile_errors", "case_failures", "grid_errors", "limit_errors"):
        problems += [f"{key}: {e}" for e in rep[key]]
    problems += [f"@triton.jit function no launcher reached: {k}" for k in rep["unreached_kernels"]]
    assert not problems, f"{len(problems)} problem(s) compiling for sm_90 with triton {rep['triton']}:\n" + \
        "\n".join(problems[:40])
    assert rep["configurations"] > 0


def test_triton_kernels_compile_for_sm90(tmp_path):
    pytest = __import__("pytest")
    pytest.importorskip("triton")
    rep = _run(tmp_path)
    RESULT.parent.mkdir(parents=True, exist_ok=True)
    RESULT.write_text(json.dumps(rep, indent=1) + "\n")
    _check(rep)
    dts = {d for r in rep["results"] for d in r["dtypes"]}
    assert {"float16", "bfloat16", "float32", "float64"} <= dts


def test_triton_kernels_compile_for_sm90_with_triton36(tmp_path):
    pytest = __import__("pytest")
    if not (TRITON36 / "triton" / "__init__.py").exists():
        pytest.skip(f"triton 3.6 not installed at {TRITON36} (pip install --no-deps --target {TRITON36} "
                    "triton==3.6.0, or set FASTDEHAZE_TRITON36)")
    rep = _run(tmp_path, TRITON36)
    assert rep["triton"].startswith("3.6"), rep["triton"]
    _check(rep)


if __name__ == "__main__":
    if len(sys.argv) >= 3 and sys.argv[1] == "--worker":
        tp = sys.argv[sys.argv.index("--triton-path") + 1] if "--triton-path" in sys.argv else None
        worker(sys.argv[2], tp)
    else:
        print(__doc__)
