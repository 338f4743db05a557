"""Launch plans of the CUDA kernels (csrc/include/fastdehaze/grid.h), checked on the host.

The CUDA launchers compute their grids with the plan functions of grid.h; the CPU extension
compiles the same header and exposes it as ``fastdehaze::_launch_plan`` (the plan),
``_launch_plan_visits`` (the (blockIdx.x, outer, block) triples a simulated launch visits, in
order) and ``_launch_plan_cover`` (visit counts of a simulated launch, for large plans). The
kernels fold every (image, channel, line/pixel block) into grid.x and loop over the logical
blocks ``u = blockIdx.x, blockIdx.x + gridDim.x, ...``; these tests check, for batch x channels
up to 65535 x 512 and H up to 70000, that grid.y = grid.z = 1, grid.x <= 2^31 - 1 and that every
(outer, element) is covered exactly once, also when grid.x is capped (the loop path).
"""
import math
import pathlib
import re

import pytest
import torch

import fastdehaze.ops  # noqa: F401  (loads the extensions)

ROOT = pathlib.Path(__file__).resolve().parents[1]
MAX_X = 2**31 - 1
OPS = torch.ops.fastdehaze


def plan(kernel, sizes, max_x=MAX_X):
    gx, gy, gz, threads, units, outer, inner, n, per_thread = OPS._launch_plan(kernel, sizes, max_x)
    return dict(gx=gx, gy=gy, gz=gz, threads=threads, units=units, outer=outer, inner=inner, n=n,
                per_thread=per_thread)


# kernel -> (sizes -> (outer, elements or blocks per outer, per_thread))
EXPECTED = {
    "asm_pixels": lambda B, HW: (B, HW, 1),
    "param_reduce": lambda BC: (BC, 1, 0),
    "dcp_atmo": lambda B: (B, 1, 0),
    "dcp_atmo_chunks": lambda B, HW: (B, (HW + 16383) // 16384, 0),
    "flat": lambda n: (1, n, 1),
    "box_rows": lambda lines, tasks: (1, lines * tasks, 1),
    "box_cols": lambda plane_tasks, W: (1, plane_tasks * W, 1),
    "plane_pixels": lambda P, HW: (P, HW, 1),
    "patch_scores": lambda B, nH, tiles: (B * nH, tiles, 0),
    "patch_select": lambda B: (B, 2, 0),
    "patch_gather": lambda total: (1, total, 1),
    "contrastive_blocks": lambda nblk: (1, nblk, 0),
    "contrastive_reduce": lambda LQ: (LQ, 1, 0),
    "dd_chunks": lambda B, nchunk: (B, nchunk, 0),
    "dd_images": lambda B: (B, 1, 0),
    "dd_pixels": lambda B, HW: (B, HW, 1),
}

BC_MAX = 65535 * 512
LARGE = [
    ("asm_pixels", [65535, 70000]), ("asm_pixels", [65535, 1]), ("asm_pixels", [1, 70000 * 70000]),
    ("param_reduce", [BC_MAX]),
    ("dcp_atmo", [65535 * 4]), ("dcp_atmo_chunks", [65535 * 4, 70000 * 70000]), ("flat", [65535 * 70000 * (70000 // 15 + 1)]),
    ("flat", [65535 * 512 * 70000]),
    ("box_rows", [BC_MAX * 13 * 70000, 70000 // 16 + 1]), ("box_cols", [BC_MAX * 4 * (70000 // 16 + 1), 70000]), ("plane_pixels", [BC_MAX, 70000]),
    ("patch_scores", [65535, 70000, 300]), ("patch_select", [65535 * 4]), ("patch_gather", [65535 * 512 * 64 * 64]),
    ("contrastive_blocks", [2**31 + 5]), ("contrastive_reduce", [16 * 161]),
    ("dd_chunks", [65535 * 4, 70000]), ("dd_images", [65535 * 4]), ("dd_pixels", [65535 * 4, 70000]),
]


def expected_units(kernel, sizes):
    outer, n, per_thread = EXPECTED[kernel](*sizes)
    p = plan(kernel, sizes)
    return outer, n, per_thread, outer * (math.ceil(n / p["threads"]) if per_thread else n)


@pytest.mark.parametrize("kernel,sizes", LARGE, ids=[f"{k}-{'x'.join(map(str, s))}" for k, s in LARGE])
def test_plan_limits_large(kernel, sizes):
    p = plan(kernel, sizes)
    outer, n, per_thread, units = expected_units(kernel, sizes)
    assert p["gy"] == 1 and p["gz"] == 1  # axes 1 and 2 (max 65535) are never used
    assert 1 <= p["gx"] <= MAX_X
    assert 32 <= p["threads"] <= 1024 and p["threads"] % 32 == 0
    assert (p["outer"], p["n"], p["per_thread"], p["units"]) == (outer, n, per_thread, units)
    # the block-uniform loop u = bx + k * gx reaches every logical block
    assert p["gx"] == min(units, MAX_X if kernel != "patch_gather" else 65535 * 16)


def check_visits(kernel, sizes, max_x):
    """Simulated launch: every (outer, element) (element plans) or (outer, block) exactly once."""
    p = plan(kernel, sizes, max_x)
    v = OPS._launch_plan_visits(kernel, sizes, max_x)
    triples = [tuple(v[i:i + 3]) for i in range(0, len(v), 3)]
    assert all(0 <= bx < p["gx"] for bx, _, _ in triples)
    # each blockIdx.x visits u = bx, bx + gx, ... in increasing order
    for bx in range(p["gx"]):
        us = [o * p["inner"] + i for b, o, i in triples if b == bx]
        assert us == list(range(bx, p["units"], p["gx"]))
    got = {}
    for _, o, i in triples:
        if p["per_thread"]:
            for t in range(p["threads"]):
                e = i * p["threads"] + t
                if e < p["n"]:
                    got[(o, e)] = got.get((o, e), 0) + 1
        else:
            got[(o, i)] = got.get((o, i), 0) + 1
    outer, n, _, _ = expected_units(kernel, sizes)
    want = {(o, e) for o in range(outer) for e in range(n)}
    assert set(got) == want
    assert set(got.values()) <= {1}
    return triples, p


SMALL = [
    ("asm_pixels", [3, 1000]), ("asm_pixels", [1, 1]), ("param_reduce", [7]), ("dcp_atmo", [5]), ("dcp_atmo_chunks", [3, 40000]), ("flat", [1025]), ("box_rows", [6, 257]), ("box_cols", [4, 17]),
    ("plane_pixels", [6, 513]), ("patch_scores", [2, 3, 4]), ("patch_select", [3]), ("patch_gather", [3000]),
    ("contrastive_blocks", [37]), ("contrastive_reduce", [9]), ("dd_chunks", [3, 5]), ("dd_images", [4]),
    ("dd_pixels", [2, 700]),
]


@pytest.mark.parametrize("max_x", [MAX_X, 7, 1])
@pytest.mark.parametrize("kernel,sizes", SMALL, ids=[f"{k}-{'x'.join(map(str, s))}" for k, s in SMALL])
def test_plan_covers_small(kernel, sizes, max_x):
    check_visits(kernel, sizes, max_x)


def test_plan_kernel_coordinates():
    """The kernels' own index maps over the visits: guided filter planes (b, c) from o, patch rows."""
    B, C, HW = 3, 5, 300
    triples, p = check_visits("plane_pixels", [B * C, HW], 4)
    seen = set()
    for _, o, i in triples:
        b, c = o // C, o % C  # gf_stats_kernel / gf_out_kernel
        for t in range(p["threads"]):
            if i * p["threads"] + t < HW:
                seen.add((b, c, i * p["threads"] + t))
    assert seen == {(b, c, x) for b in range(B) for c in range(C) for x in range(HW)}
    B, nH, tiles = 2, 3, 4
    triples, p = check_visits("patch_scores", [B, nH, tiles], 5)
    got = sorted((o // nH, o % nH, i) for _, o, i in triples)  # patch_scores_kernel: b, patch row, tile
    assert got == [(b, r, t) for b in range(B) for r in range(nH) for t in range(tiles)]


COVER = [
    ("asm_pixels", [65535, 70000], MAX_X), ("asm_pixels", [65535, 70000], 1000),
    ("plane_pixels", [BC_MAX, 1], MAX_X), ("plane_pixels", [BC_MAX, 1], 65535),
    ("box_cols", [512, 70000], 3), ("box_rows", [65535 * 3 * 64, 5], 65535),
    ("param_reduce", [BC_MAX], MAX_X), ("patch_scores", [65535, 5, 3], 10000),
    ("dd_pixels", [65535, 70000], 123457), ("flat", [70000 * 70000], MAX_X),
]


@pytest.mark.parametrize("kernel,sizes,max_x", COVER, ids=[f"{k}-{'x'.join(map(str, s))}-{m}" for k, s, m in COVER])
def test_plan_covers_large(kernel, sizes, max_x):
    visits, lo, hi, elems, bad = OPS._launch_plan_cover(kernel, sizes, max_x)
    outer, n, per_thread, units = expected_units(kernel, sizes)
    assert bad == 0
    assert visits == units and lo == 1 and hi == 1
    assert elems == (outer * n if per_thread else units)


def test_plan_bad_arguments():
    with pytest.raises(RuntimeError, match="unknown kernel"):
        OPS._launch_plan("nope", [1])
    with pytest.raises(RuntimeError, match="takes 2 sizes"):
        OPS._launch_plan("asm_pixels", [1])
    with pytest.raises(RuntimeError, match="max_x"):
        OPS._launch_plan("flat", [10], 0)


def test_plan_empty():
    for kernel, sizes in [("asm_pixels", [0, 10]), ("asm_pixels", [4, 0]), ("flat", [0]), ("dcp_atmo", [0])]:
        p = plan(kernel, sizes)
        assert p["units"] == 0 and p["gx"] == 1
        assert OPS._launch_plan_visits(kernel, sizes) == []


def test_cuda_sources_launch_through_plans():
    """Every launch in csrc/cuda/*.cu takes its grid from a plan (FD_GRID) or is one fixed block,
    and no kernel reads blockIdx.y/z or gridDim.y/z (the plans never set them)."""
    launches = 0
    for path in sorted((ROOT / "csrc" / "cuda").glob("*.cu")):
        src = path.read_text()
        assert not re.search(r"(blockIdx|gridDim)\.[yz]", src), path.name
        for m in re.finditer(r"<<<([^,>]+),", src):
            launches += 1
            grid_arg = m.group(1).strip()
            assert grid_arg.startswith("FD_GRID(") or grid_arg == "1", (path.name, grid_arg)
    assert launches >= 30


# ---- dark/bright channel backward of the CUDA backend: a gather (dcp_math.h col_adjoint /
# row_adjoint, the index logic of csrc/cuda/dcp.cu col_adjoint_kernel and row_adjoint_kernel),
# run on the host through fastdehaze::_dcp_gather_backward.

def _winners(I, patch, is_max):
    """Brute-force winners in the CUDA kernels' layout: lowest extremal channel per pixel, then
    the first extremum of each row window, then the first (lowest row) extremum of each column
    window of the row results (np.argmin/argmax return the first occurrence, and the first NaN)."""
    import numpy as np
    pick = np.argmax if is_max else np.argmin
    B, C, H, W = I.shape
    r = patch // 2
    chan = pick(I, axis=1)
    m = np.take_along_axis(I, chan[:, None], 1)[:, 0]
    rows_a = np.zeros((B, H, W), np.int32)
    cols_a = np.zeros((B, H, W), np.int32)
    for b in range(B):
        for y in range(H):
            for x in range(W):
                lo, hi = max(0, x - r), min(W - 1, x + r)
                rows_a[b, y, x] = lo + pick(m[b, y, lo:hi + 1])
        R = np.take_along_axis(m[b], rows_a[b], 1)
        for y in range(H):
            lo, hi = max(0, y - r), min(H - 1, y + r)
            for x in range(W):
                cols_a[b, y, x] = lo + pick(R[lo:hi + 1, x])
    return rows_a, cols_a, chan.astype(np.int32)


@pytest.mark.parametrize("is_max", [False, True])
@pytest.mark.parametrize("shape,patch", [((2, 3, 9, 11), 3), ((1, 3, 17, 5), 5), ((1, 1, 6, 7), 1),
                                         ((2, 2, 4, 9), 15), ((1, 3, 1, 13), 3)])
def test_dcp_gather_backward_matches_scatter_and_cpu(shape, patch, is_max):
    import numpy as np
    gen = np.random.default_rng(sum(shape) + patch + is_max)
    B, C, H, W = shape
    I = gen.integers(0, 3, size=shape).astype(np.float64)  # many ties
    I[gen.random(shape) < 0.03] = np.nan
    grad = gen.integers(-4, 5, size=(B, H, W)).astype(np.float64)  # integer: every summation order is exact
    rows_a, cols_a, chan = _winners(I, patch, is_max)
    want = np.zeros(shape)
    for b in range(B):
        for y in range(H):
            for x in range(W):
                ys = cols_a[b, y, x]
                xs = rows_a[b, ys, x]
                want[b, chan[b, ys, xs], ys, xs] += grad[b, y, x]
    got = OPS._dcp_gather_backward(torch.from_numpy(grad), torch.from_numpy(rows_a), torch.from_numpy(cols_a),
                                   torch.from_numpy(chan), C, patch)
    assert torch.equal(got, torch.from_numpy(want))
    # the brute-force winners are the CPU kernel's: its backward is the same scatter
    op = OPS.bright_channel_backward if is_max else OPS.dark_channel_backward
    cpu = op(torch.from_numpy(grad)[:, None], torch.from_numpy(I), patch)
    assert torch.equal(cpu, torch.from_numpy(want))


def test_dcp_gather_backward_bad_arguments():
    g = torch.zeros(1, 2, 2, dtype=torch.float64)
    a = torch.zeros(1, 2, 2, dtype=torch.int32)
    with pytest.raises(RuntimeError, match="int32"):
        OPS._dcp_gather_backward(g, a.long(), a, a, 1, 3)
    with pytest.raises(RuntimeError, match="float64"):
        OPS._dcp_gather_backward(g.float(), a, a, a, 1, 3)


# ---- forward line pass of the CUDA dark/bright channel: independent tasks of one block of
# w = 2r+1 (dcp_math.h window_task, the index logic of csrc/cuda/dcp.cu rows_kernel/cols_kernel),
# run on the host through fastdehaze::_dcp_window_tasks (tasks last to first).

def _window_ref(lines, r, is_max):
    import numpy as np
    pick = np.argmax if is_max else np.argmin
    L, n = lines.shape
    val = np.empty((L, n))
    pos = np.empty((L, n), np.int32)
    for l in range(L):
        for x in range(n):
            lo, hi = max(0, x - r), min(n - 1, x + r)
            k = lo + pick(lines[l, lo:hi + 1])  # first extremum, first NaN
            pos[l, x], val[l, x] = k, lines[l, k]
    return val, pos


@pytest.mark.parametrize("is_max", [False, True])
@pytest.mark.parametrize("columns", [False, True])
@pytest.mark.parametrize("n,patch", [(1, 1), (1, 7), (2, 3), (5, 1), (7, 3), (16, 3), (17, 5), (31, 7), (40, 15),
                                     (9, 31), (257, 9), (100, 201),
                                     (15, 3), (30, 5), (26, 13)])  # n = multiple of w: a tail task starting at n
def test_dcp_window_tasks_match_bruteforce(n, patch, is_max, columns):
    import numpy as np
    gen = np.random.default_rng(n * 1000 + patch + 7 * is_max + 3 * columns)
    lines = gen.integers(0, 4, size=(5, n)).astype(np.float64)  # many ties
    lines[gen.random(lines.shape) < 0.05] = np.nan
    lines[0] = np.nan if n < 3 else lines[0]
    want_v, want_p = _window_ref(lines, patch // 2, is_max)
    arg = torch.from_numpy(lines.T.copy() if columns else lines)
    got_v, got_p = OPS._dcp_window_tasks(arg, patch, is_max, columns)
    if columns:
        got_v, got_p = got_v.T, got_p.T
    assert torch.equal(got_p, torch.from_numpy(want_p))
    assert torch.allclose(got_v, torch.from_numpy(want_v), equal_nan=True, rtol=0, atol=0)


def test_dcp_window_tasks_count():
    """line_tasks = ceil((n + r) / w): every output x of the line is emitted by exactly one task."""
    import numpy as np
    lines = np.arange(12.0)[None]
    v, p = OPS._dcp_window_tasks(torch.from_numpy(lines), 3, False, False)
    assert p.tolist() == [[0, 0] + list(range(1, 11))]


# ---- box filter line passes of the CUDA backend: independent tasks of max(2r+1, 16) outputs
# (filters_math.h box_task, the index logic of csrc/cuda/filters.cu box_line_kernel and
# box_col_kernel), run on the host through fastdehaze::_box_line_tasks (tasks last to first).

def _box_ref(x, r, adjoint):
    import numpy as np
    L, n = x.shape
    cnt = np.array([min(n - 1, i + r) - max(0, i - r) + 1 for i in range(n)], np.float64)
    out = np.empty_like(x)
    for l in range(L):
        for i in range(n):
            lo, hi = max(0, i - r), min(n - 1, i + r)
            win = x[l, lo:hi + 1]
            if not np.all(np.isfinite(win)):
                out[l, i] = np.nan
            elif adjoint:
                out[l, i] = np.sum(win / cnt[lo:hi + 1])
            else:
                out[l, i] = np.sum(win) / cnt[i]
    return out


@pytest.mark.parametrize("adjoint", [False, True])
@pytest.mark.parametrize("n,r", [(1, 1), (1, 0), (5, 0), (15, 1), (16, 1), (17, 1), (33, 2), (40, 9), (100, 7),
                                 (7, 20), (257, 3)])
def test_box_line_tasks_match_bruteforce(n, r, adjoint):
    import numpy as np
    gen = np.random.default_rng(n * 100 + r + adjoint)
    x = gen.standard_normal((4, n))
    x[1, gen.random(n) < 0.05] = np.nan
    x[2, gen.random(n) < 0.05] = np.inf
    got = OPS._box_line_tasks(torch.from_numpy(x), r, adjoint)
    want = torch.from_numpy(_box_ref(x, r, adjoint))
    assert torch.allclose(got, want, rtol=1e-12, atol=1e-12, equal_nan=True)
    assert torch.equal(got.isnan(), want.isnan())


# ---- atmospheric light of the CUDA backend: multi-block radix select (dcp_math.h select_digit,
# chunk histograms, tie ranks through chunk offsets: csrc/cuda/dcp.cu atmo_*_kernel), run on
# the host through fastdehaze::_atmo_select.

@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("HW,k", [(1, 1), (7, 3), (7, 20), (16384, 100), (40000, 1), (40000, 12000),
                                  (40000, 39999), (50001, 25000)])
def test_atmo_select_matches_stable_topk(HW, k, dtype):
    import numpy as np
    gen = np.random.default_rng(HW + k)
    B = 2
    dark = gen.choice(np.array([0.0, 0.25, 0.5, 1.0, -0.0, np.nan]), size=(B, HW), p=[.3, .2, .2, .2, .05, .05])
    dark[1] = gen.random(HW)
    d = torch.from_numpy(dark).to(dtype)
    got = OPS._atmo_select(d, k)
    want = torch.zeros(B, HW, dtype=torch.bool)
    for b in range(B):
        v = d[b].double().numpy()
        key = np.where(np.isnan(v), np.inf, v)
        key = np.where(key == 0, 0.0, key)  # -0.0 and 0.0: the order keys differ, +0 above -0
        neg_zero = (v == 0) & np.signbit(v)
        order = np.lexsort((np.arange(HW), neg_zero, -key, ~np.isnan(v)))  # NaN first, larger, +0 before -0, lower index
        want[b, torch.from_numpy(order[:min(k, HW)].copy())] = True
    assert torch.equal(got, want)
    # and the CPU kernel's A is the mean over exactly these pixels
    I = torch.rand(B, 2, 1, HW, dtype=torch.float64)
    A = OPS.atmospheric_light(I, d.double().reshape(B, 1, 1, HW), k)
    ref = torch.stack([I[b, :, 0, want[b]].mean(-1) for b in range(B)])
    assert torch.allclose(A, ref, rtol=1e-12, atol=0)
