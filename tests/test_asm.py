"""Tests of the atmospheric scattering model ops (SPEC section 1): synthesize_haze,
transmission_from_depth, recover, recompose_k, in every backend, against the float64 reference
of fastdehaze/reference/asm.py (values and gradients).

Inputs stay tiny: the Triton kernels run under the CPU interpreter here.
"""
from __future__ import annotations

import dataclasses

import pytest
import torch

import fastdehaze.ops as F
from fastdehaze.ops import asm as ops_asm
from fastdehaze.reference import asm as R

F64 = torch.float64
OPS = ("synthesize_haze", "synthesize_haze_depth", "transmission_from_depth", "recover", "recompose_k")
# The registered ops of the family, forward and backward (their Triton twins are "<name>_triton"
# and "<name>_backward_triton").
FUSED = {"recover": ops_asm._recover, "synthesize_haze": ops_asm._synthesize,
         "synthesize_haze_depth": ops_asm._synthesize_depth,
         "transmission_from_depth": ops_asm._transmission, "recompose_k": ops_asm._recompose}


def _rand(gen, shape, lo=0.0, hi=1.0):
    return torch.rand(tuple(shape), generator=gen, dtype=F64) * (hi - lo) + lo


@dataclasses.dataclass
class Case:
    """One call of a public op: tensors (differentiable where floating) and other keywords."""
    name: str
    tensors: dict
    kw: dict

    @property
    def fn(self):
        return getattr(F, self.name.split(":")[0])

    @property
    def ref(self):
        return getattr(R, self.name.split(":")[0])


CASE_NAMES = ("recover", "recover:clamp", "synthesize_haze:t", "synthesize_haze:depth", "transmission_from_depth",
              "recompose_k")


def make_case(name, shape, mc=1, seed=0, pshape="bc"):
    """Inputs of op ``name`` for an image ``shape`` [B,C,H,W]; ``mc`` channels of the per-pixel
    map (t, depth or K); parameters of shape [B,C,1,1] ("bc") or [B,1,1,1] ("b1")."""
    g = torch.Generator().manual_seed(seed)
    B, C, H, W = shape
    mc = 1 if mc == 1 else C
    ps = (B, C, 1, 1) if pshape == "bc" else (B, 1, 1, 1)
    if name.startswith("recover"):
        # t in [0.02, 1]: about 8% of it below t0 = 0.1 (gradient 0 there).
        kw = {"t0": 0.1, "clamp": (0.0, 1.0) if name.endswith("clamp") else None}
        return Case(name, {"I": _rand(g, shape), "t": _rand(g, (B, mc, H, W), 0.02, 1.0),
                           "A": _rand(g, ps, 0.6, 1.0)}, kw)
    if name == "synthesize_haze:t":
        return Case(name, {"J": _rand(g, shape), "A": _rand(g, ps, 0.6, 1.0), "t": _rand(g, (B, mc, H, W))}, {})
    if name == "synthesize_haze:depth":
        return Case(name, {"J": _rand(g, shape), "A": _rand(g, ps, 0.6, 1.0), "depth": _rand(g, (B, mc, H, W), 0, 3),
                           "beta": _rand(g, ps, 0.2, 1.5)}, {})
    if name == "transmission_from_depth":
        return Case(name, {"depth": _rand(g, (B, mc, H, W), 0, 3), "beta": _rand(g, ps, 0.2, 1.5)}, {})
    if name == "recompose_k":
        return Case(name, {"I": _rand(g, shape), "K": _rand(g, (B, mc, H, W), -2, 2), "b": _rand(g, ps, 0.5, 1.5)}, {})
    raise KeyError(name)


def run_case(case, backend, device, dtype=F64, transform=None, grads=True, seed=1):
    """(output, grads) of the public op on ``device`` in ``dtype`` (inputs transformed by
    ``transform``, e.g. made non-contiguous), and the same from the float64 reference on the
    CPU. Gradients are taken w.r.t. every tensor argument for a random upstream gradient."""
    def prepare(dt, dev):
        leaves = {k: v.to(device=dev, dtype=dt).requires_grad_(grads) for k, v in case.tensors.items()}
        args = {k: (transform(v) if transform is not None and v.shape[2:] != (1, 1) else v) for k, v in leaves.items()}
        return leaves, args

    leaves, args = prepare(dtype, device)
    out = case.fn(**args, **case.kw, backend=backend)
    rleaves, rargs = prepare(F64, "cpu")
    ref = case.ref(**rargs, **case.kw)
    if not grads:
        return out, ref, None, None
    up = torch.randn(ref.shape, generator=torch.Generator().manual_seed(seed), dtype=F64)
    gs = torch.autograd.grad(out, list(leaves.values()), up.to(device=device, dtype=out.dtype), allow_unused=True)
    rgs = torch.autograd.grad(ref, list(rleaves.values()), up, allow_unused=True)
    return out, ref, dict(zip(leaves, gs)), dict(zip(rleaves, rgs))


def assert_matches(out, ref, gs, rgs, rtol, atol, dtype):
    assert out.dtype == dtype and out.shape == ref.shape
    torch.testing.assert_close(out.cpu().to(F64), ref, rtol=rtol, atol=atol, equal_nan=True)
    if gs is not None:
        for k in rgs:
            if rgs[k] is None:
                assert gs[k] is None or not gs[k].any(), k
                continue
            assert gs[k] is not None, f"no gradient for {k}"
            # Parameter gradients are sums over many pixels: scale the tolerance by the count.
            n = max(1, ref.numel() // max(1, gs[k].numel())) if gs[k].shape[2:] == (1, 1) else 1
            torch.testing.assert_close(gs[k].cpu().to(F64), rgs[k], rtol=rtol, atol=atol * n, equal_nan=True,
                                       msg=lambda m, k=k: f"gradient w.r.t. {k}: {m}")


# ---- values and gradients against the float64 reference ------------------------------------------

@pytest.mark.parametrize("name", CASE_NAMES)
@pytest.mark.parametrize("shape,mc", [((2, 3, 5, 7), 1), ((2, 3, 5, 7), 3), ((1, 1, 1, 1), 1), ((3, 2, 3, 17), 2),
                                      ((1, 3, 17, 257), 1)], ids=lambda v: str(v))
def test_float64_matches_reference(backend_device, name, shape, mc):
    backend, device = backend_device
    out, ref, gs, rgs = run_case(make_case(name, shape, mc), backend, device)
    assert_matches(out, ref, gs, rgs, rtol=1e-12, atol=1e-12, dtype=F64)


@pytest.mark.parametrize("name", CASE_NAMES)
def test_gradcheck(backend_device, name):
    backend, device = backend_device
    case = make_case(name, (2, 2, 2, 3), mc=1, pshape="bc")
    if name.startswith("recover"):
        # Away from the kink of max(t, t0) and, with clamp, from the output clamp's kinks.
        case.tensors["t"] = case.tensors["t"].clamp(min=0.3)
        case.tensors["I"] = case.tensors["A"].expand_as(case.tensors["I"]) + 0.05 * (case.tensors["I"] - 0.5)
    keys = list(case.tensors)
    inputs = tuple(case.tensors[k].to(device).requires_grad_() for k in keys)

    def f(*xs):
        return case.fn(**dict(zip(keys, xs)), **case.kw, backend=backend)

    assert torch.autograd.gradcheck(f, inputs, eps=1e-6, atol=1e-7, rtol=1e-6)


# ---- layouts, sizes, dtypes ----------------------------------------------------------------------

LAYOUTS = {
    "nhwc_permuted": lambda x: x.permute(0, 2, 3, 1).contiguous().permute(0, 3, 1, 2),
    "slice": lambda x: torch.cat([x, x], dim=3)[:, :, :, ::2],
    "channels_last": lambda x: x.contiguous(memory_format=torch.channels_last),
}


@pytest.mark.parametrize("layout", list(LAYOUTS))
@pytest.mark.parametrize("name", CASE_NAMES)
def test_non_contiguous_inputs(backend_device, name, layout):
    backend, device = backend_device
    case = make_case(name, (2, 3, 4, 5), mc=3)
    out, ref, gs, rgs = run_case(case, backend, device, transform=LAYOUTS[layout])
    assert_matches(out, ref, gs, rgs, rtol=1e-12, atol=1e-12, dtype=F64)


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.float16, 2e-2), (torch.bfloat16, 8e-2)],
                         ids=["f32", "f16", "bf16"])
@pytest.mark.parametrize("name", CASE_NAMES)
def test_low_precision(backend_device, name, dtype, tol):
    backend, device = backend_device
    case = make_case(name, (2, 3, 4, 9), mc=1)
    # Round the inputs to dtype first, so the reference sees what the kernel sees.
    case.tensors = {k: v.to(dtype).to(F64) for k, v in case.tensors.items()}
    out, ref, gs, rgs = run_case(case, backend, device, dtype=dtype)
    # |K| <= 2, 1/t <= 10, so the values are O(10): tol is relative to that scale.
    assert_matches(out, ref, gs, rgs, rtol=tol, atol=tol * 10, dtype=dtype)


@pytest.mark.parametrize("name", CASE_NAMES)
def test_batch_zero(backend_device, name, monkeypatch):
    backend, device = backend_device
    if backend == "triton":
        from fastdehaze.kernels import asm as k

        class NoLaunch:
            def __getitem__(self, grid):
                raise AssertionError("a kernel was launched for an empty batch")

        for attr in [a for a in dir(k) if a.startswith("_") and a.endswith("_kernel")]:
            monkeypatch.setattr(k, attr, NoLaunch())
    case = make_case(name, (0, 3, 4, 5), mc=1)
    out, ref, gs, rgs = run_case(case, backend, device)
    assert out.shape == ref.shape and out.numel() == 0
    for key in rgs:
        if rgs[key] is not None:
            assert gs[key].shape == rgs[key].shape and not gs[key].any()


def test_batch_zero_triton_guard_works(monkeypatch):
    """The guard of test_batch_zero does catch a launch (so that test can fail)."""
    pytest.importorskip("triton")
    from fastdehaze.kernels import asm as k

    class NoLaunch:
        def __getitem__(self, grid):
            raise AssertionError("launched")

    monkeypatch.setattr(k, "_synthesize_kernel", NoLaunch())
    with pytest.raises(AssertionError, match="launched"):
        k.synthesize_haze(torch.rand(1, 3, 2, 2), torch.rand(1, 1, 2, 2), torch.rand(1, 3))


# ---- broadcast forms of A / beta / t0 / b ----------------------------------------------------------

B_, C_ = 2, 3
PARAM_FORMS = {
    "float": lambda g: 0.7,
    "0d": lambda g: _rand(g, ()) * 0.5 + 0.5,
    "B111": lambda g: _rand(g, (B_, 1, 1, 1), 0.5, 1.0),
    "BC11": lambda g: _rand(g, (B_, C_, 1, 1), 0.5, 1.0),
    "1C11": lambda g: _rand(g, (1, C_, 1, 1), 0.5, 1.0),
}


@pytest.mark.parametrize("form", list(PARAM_FORMS))
@pytest.mark.parametrize("name,param", [("recover", "A"), ("recover", "t0"), ("synthesize_haze:t", "A"),
                                        ("synthesize_haze:depth", "A"), ("synthesize_haze:depth", "beta"),
                                        ("transmission_from_depth", "beta"), ("recompose_k", "b")])
def test_parameter_broadcast_forms(backend_device, name, param, form):
    backend, device = backend_device
    case = make_case(name, (B_, C_, 3, 4), mc=1)
    value = PARAM_FORMS[form](torch.Generator().manual_seed(3))
    if param == "t0":
        if isinstance(value, torch.Tensor):
            value = value * 0.5  # t0 in [0.25, 0.5]: some t below it
        case.kw["t0"] = value if not isinstance(value, torch.Tensor) else value.to(device)
    elif isinstance(value, torch.Tensor):
        case.tensors[param] = value
    else:
        del case.tensors[param]
        case.kw[param] = value
    if param == "t0":
        # run_case moves tensors; t0 is a non-differentiable keyword: give the reference a CPU copy.
        out = case.fn(**{k: v.to(device) for k, v in case.tensors.items()}, **case.kw, backend=backend)
        kw = dict(case.kw, t0=case.kw["t0"].cpu() if isinstance(case.kw["t0"], torch.Tensor) else case.kw["t0"])
        ref = case.ref(**case.tensors, **kw)
        torch.testing.assert_close(out.cpu(), ref, rtol=1e-12, atol=1e-12)
        return
    out, ref, gs, rgs = run_case(case, backend, device)
    assert_matches(out, ref, gs, rgs, rtol=1e-12, atol=1e-12, dtype=F64)
    if name == "transmission_from_depth":
        assert out.shape[1] == (C_ if form in ("BC11", "1C11") else 1)  # per-channel beta: per-channel t


# ---- known answers --------------------------------------------------------------------------------

def _scalar_image(v, device, C=1):
    return torch.full((1, C, 1, 1), float(v), dtype=F64, device=device)


def test_recover_known_answer(backend_device):
    backend, device = backend_device
    J = F.recover(_scalar_image(0.5, device), _scalar_image(0.1, device), 0.05, backend=backend)
    assert J.item() == pytest.approx(4.55, abs=1e-12)  # (0.5 - 0.05) / 0.1 + 0.05, unclamped
    Jc = F.recover(_scalar_image(0.5, device), _scalar_image(0.1, device), 0.05, clamp=(0, 1), backend=backend)
    assert Jc.item() == 1.0


@pytest.mark.parametrize("tv", [0.0, -0.1])
def test_recover_below_t0_acts_as_t0_with_zero_gradient(backend_device, tv):
    backend, device = backend_device
    t = _scalar_image(tv, device).requires_grad_()
    J = F.recover(_scalar_image(0.5, device), t, 0.05, t0=0.1, backend=backend)
    assert J.item() == pytest.approx(4.55, abs=1e-12)
    (g,) = torch.autograd.grad(J.sum(), t)
    assert g.item() == 0.0
    # At t == t0 the gradient passes (torch.clamp): -(I - A) / t^2 = -45.
    t1 = _scalar_image(0.1, device).requires_grad_()
    (g1,) = torch.autograd.grad(F.recover(_scalar_image(0.5, device), t1, 0.05, t0=0.1, backend=backend).sum(), t1)
    assert g1.item() == pytest.approx(-45.0, rel=1e-12)


@pytest.mark.parametrize("name", CASE_NAMES)
def test_nan_propagates(backend_device, name):
    backend, device = backend_device
    case = make_case(name, (1, 3, 2, 3), mc=1)
    key = {"recover": "t", "recover:clamp": "t", "synthesize_haze:t": "J", "synthesize_haze:depth": "depth",
           "transmission_from_depth": "depth", "recompose_k": "K"}[name]
    case.tensors[key][0, 0, 1, 2] = float("nan")
    out, ref, _, _ = run_case(case, backend, device, grads=False)
    assert out[0, 0, 1, 2].isnan().all()
    assert out.isnan().sum() == ref.isnan().sum() > 0
    torch.testing.assert_close(out.cpu(), ref, rtol=1e-12, atol=1e-12, equal_nan=True)


def test_recover_nan_t_is_not_replaced_by_t0(backend_device):
    backend, device = backend_device
    J = F.recover(_scalar_image(0.5, device), _scalar_image(float("nan"), device), 0.05, backend=backend)
    assert J.isnan().all()


def test_depth_zero_gives_clear_image(backend_device):
    backend, device = backend_device
    J = torch.rand(2, 3, 3, 5, dtype=F64, device=device)
    I = F.synthesize_haze(J, 0.9, depth=torch.zeros(2, 1, 3, 5, dtype=F64, device=device), beta=1.2, backend=backend)
    assert torch.equal(I, J)


def test_depth_far_gives_airlight(backend_device):
    backend, device = backend_device
    J = torch.rand(2, 3, 3, 5, dtype=F64, device=device)
    A = torch.tensor([0.8, 0.9, 1.0], dtype=F64, device=device).view(1, 3, 1, 1)
    I = F.synthesize_haze(J, A, depth=torch.full((2, 1, 3, 5), 1e4, dtype=F64, device=device), beta=0.04,
                          backend=backend)  # 0.04: RESIDE's smallest outdoor beta
    torch.testing.assert_close(I, A.expand_as(I), rtol=0, atol=1e-6)


@pytest.mark.parametrize("mc", [1, 3])
def test_synthesis_then_recovery_round_trip(backend_device, mc):
    backend, device = backend_device
    g = torch.Generator().manual_seed(5)
    J = _rand(g, (2, 3, 4, 6)).to(device)
    t = _rand(g, (2, mc, 4, 6), 0.1, 1.0).to(device)  # t >= t0
    A = _rand(g, (2, 3, 1, 1), 0.7, 1.0).to(device)
    I = F.synthesize_haze(J, A, t=t, backend=backend)
    torch.testing.assert_close(F.recover(I, t, A, t0=0.1, backend=backend), J, rtol=0, atol=1e-9)
    depth = _rand(g, (2, 1, 4, 6), 0, 2).to(device)
    I2 = F.synthesize_haze(J, A, depth=depth, beta=1.0, backend=backend)
    t2 = F.transmission_from_depth(depth, 1.0, backend=backend)
    torch.testing.assert_close(F.recover(I2, t2, A, t0=0.1, backend=backend), J, rtol=0, atol=1e-9)


def test_recompose_k_matches_aod_net_closed_form(backend_device):
    """With K from its closed form (AOD-Net eq. 5) recompose_k returns the ASM recovery."""
    backend, device = backend_device
    g = torch.Generator().manual_seed(7)
    I = _rand(g, (1, 3, 4, 4), 0.1, 0.9).to(device)
    t = _rand(g, (1, 1, 4, 4), 0.2, 1.0).to(device)
    A, b = 0.95, 1.0
    K = ((I - A) / t + (A - b)) / (I - 1)
    torch.testing.assert_close(F.recompose_k(I, K, b, backend=backend), F.recover(I, t, A, t0=0.01, backend="reference"),
                               rtol=1e-12, atol=1e-12)


def test_backend_auto_is_cpu_kernel_on_cpu():
    case = make_case("synthesize_haze:t", (1, 3, 4, 4))
    a = F.synthesize_haze(**case.tensors, backend="auto")
    c = F.synthesize_haze(**case.tensors, backend="cpu")
    assert torch.equal(a, c)


# ---- bad input ------------------------------------------------------------------------------------

def _bad_calls():
    x = torch.rand(1, 3, 4, 4)
    m = torch.rand(1, 1, 4, 4)
    xi = (x * 255).to(torch.uint8)
    return [
        # recover
        ("recover ndim", lambda: F.recover(x[0], m, 0.9), ValueError, r"I must have 4 dims"),
        ("recover t channels", lambda: F.recover(x, torch.rand(1, 2, 4, 4), 0.9), ValueError, r"^t must be"),
        ("recover t size", lambda: F.recover(x, torch.rand(1, 1, 4, 5), 0.9), ValueError, r"^t must be"),
        ("recover int I", lambda: F.recover(xi, m, 0.9), TypeError, r"^I must be a floating"),
        ("recover t list", lambda: F.recover(x, [0.5], 0.9), TypeError, r"^t must be a torch.Tensor"),
        ("recover A shape", lambda: F.recover(x, m, torch.rand(1, 2, 1, 1)), ValueError, r"^A must be"),
        ("recover A str", lambda: F.recover(x, m, "bright"), TypeError, r"^A must be a float"),
        ("recover t0", lambda: F.recover(x, m, 0.9, t0=0.0), ValueError, r"^t0 must be > 0"),
        ("recover clamp", lambda: F.recover(x, m, 0.9, clamp=(1, 0)), ValueError, r"^clamp must"),
        # synthesize_haze
        ("synth ndim", lambda: F.synthesize_haze(x[0], 0.9, t=m), ValueError, r"^J must have 4 dims"),
        ("synth int J", lambda: F.synthesize_haze(xi, 0.9, t=m), TypeError, r"^J must be a floating"),
        ("synth t channels", lambda: F.synthesize_haze(x, 0.9, t=torch.rand(1, 2, 4, 4)), ValueError, r"^t must be"),
        ("synth depth channels", lambda: F.synthesize_haze(x, 0.9, depth=torch.rand(1, 2, 4, 4), beta=1.0),
         ValueError, r"^depth must be"),
        ("synth int depth", lambda: F.synthesize_haze(x, 0.9, depth=torch.ones(1, 1, 4, 4, dtype=torch.int64),
                                                       beta=1.0), TypeError, r"^depth must be a floating"),
        ("synth neg depth", lambda: F.synthesize_haze(x, 0.9, depth=-m, beta=1.0), ValueError, r"^depth must be >= 0"),
        ("synth neg beta", lambda: F.synthesize_haze(x, 0.9, depth=m, beta=-0.1), ValueError, r"^beta must be >= 0"),
        ("synth neg beta tensor", lambda: F.synthesize_haze(x, 0.9, depth=m, beta=torch.tensor(-0.1)), ValueError,
         r"^beta must be >= 0"),
        ("synth beta shape", lambda: F.synthesize_haze(x, 0.9, depth=m, beta=torch.rand(1, 2, 1, 1)), ValueError,
         r"^beta"),
        ("synth both", lambda: F.synthesize_haze(x, 0.9, t=m, depth=m, beta=1.0), ValueError, r"either t or depth"),
        ("synth neither", lambda: F.synthesize_haze(x, 0.9), ValueError, r"give t, or both depth and beta"),
        ("synth depth no beta", lambda: F.synthesize_haze(x, 0.9, depth=m), ValueError, r"beta=None"),
        ("synth A shape", lambda: F.synthesize_haze(x, torch.rand(3), t=m), ValueError, r"^A must be"),
        # transmission_from_depth
        ("tfd ndim", lambda: F.transmission_from_depth(m[0], 1.0), ValueError, r"^depth must have 4 dims"),
        ("tfd int", lambda: F.transmission_from_depth(m.to(torch.int32), 1.0), TypeError, r"^depth must be a floating"),
        ("tfd neg depth", lambda: F.transmission_from_depth(m - 2, 1.0), ValueError, r"^depth must be >= 0"),
        ("tfd neg beta", lambda: F.transmission_from_depth(m, -1.0), ValueError, r"^beta must be >= 0"),
        ("tfd beta type", lambda: F.transmission_from_depth(m, "fog"), TypeError, r"^beta must be a float"),
        ("tfd beta int tensor", lambda: F.transmission_from_depth(m, torch.tensor(1)), TypeError,
         r"^beta must be a floating"),
        ("tfd beta channels", lambda: F.transmission_from_depth(torch.rand(1, 2, 4, 4), torch.rand(1, 3, 1, 1)),
         ValueError, r"^beta has 3 channels"),
        # recompose_k
        ("rk ndim", lambda: F.recompose_k(x[0], m), ValueError, r"^I must have 4 dims"),
        ("rk K channels", lambda: F.recompose_k(x, torch.rand(1, 2, 4, 4)), ValueError, r"^K must be"),
        ("rk int K", lambda: F.recompose_k(x, torch.ones(1, 1, 4, 4, dtype=torch.int64)), TypeError,
         r"^K must be a floating"),
        ("rk b shape", lambda: F.recompose_k(x, m, torch.rand(2, 3, 1, 1)), ValueError, r"^b must be"),
        ("rk b type", lambda: F.recompose_k(x, m, None), TypeError, r"^b must be a float"),
        # backend
        ("bad backend", lambda: F.recover(x, m, 0.9, backend="fast"), ValueError, r"^backend must be one of"),
        ("cuda on cpu", lambda: F.recompose_k(x, m, backend="cuda"), RuntimeError, r"backend='cuda' needs CUDA"),
    ]


@pytest.mark.parametrize("backend", ["cpu", "reference"])
@pytest.mark.parametrize("call,exc,match", [c[1:] for c in _bad_calls()], ids=[c[0] for c in _bad_calls()])
def test_bad_input(call, exc, match, backend):
    # The backend keyword is bound by the lambdas' default ("auto" = cpu here); run the
    # reference path too by patching resolve_backend's choice.
    if backend == "reference":
        orig = ops_asm.resolve_backend
        ops_asm.resolve_backend = lambda b, fam, dev: "reference" if b == "auto" else orig(b, fam, dev)
        try:
            with pytest.raises(exc, match=match):
                call()
        finally:
            ops_asm.resolve_backend = orig
    else:
        with pytest.raises(exc, match=match):
            call()


# ---- registration: schemas, opcheck, torch.compile --------------------------------------------------

def _schema_text(op):
    s = op._schema
    return [(a.name, str(a.type)) for a in s.arguments], [str(r.type) for r in s.returns]


@pytest.mark.parametrize("name", OPS)
def test_triton_schemas_equal_cpp_schemas(name):
    ns = torch.ops.fastdehaze
    for fwd in (name, f"{name}_backward"):
        cpp = getattr(ns, fwd).default
        tri = getattr(ns, f"{name}_triton" if fwd == name else f"{name}_backward_triton").default
        assert _schema_text(cpp) == _schema_text(tri), fwd
        assert str(cpp._schema).replace(f"fastdehaze::{fwd}", "X") == \
            str(tri._schema).replace(str(tri._schema.name), "X").replace("fastdehaze::X", "X")


def _opcheck_samples(name):
    """Normalised kernel arguments of the registered op ``name`` (what the public op passes)."""
    g = torch.Generator().manual_seed(11)
    B, C, H, W = 2, 3, 3, 4
    img = lambda: _rand(g, (B, C, H, W))  # noqa: E731
    pix = lambda c=1: _rand(g, (B, c, H, W), 0.05, 1.0)  # noqa: E731
    bc = lambda: _rand(g, (B, C), 0.5, 1.0)  # noqa: E731
    samples = []
    for rg in (True, False):
        r = lambda x: x.requires_grad_(rg)  # noqa: E731
        if name == "recover":
            samples += [(r(img()), r(pix()), r(bc()), bc(), 0.0, 1.0, False),
                        (r(img()), r(pix(C)), bc(), bc(), 0.0, 1.0, True)]
        elif name == "synthesize_haze":
            samples += [(r(img()), r(pix()), r(bc())), (img(), r(pix(C)), r(bc()))]
        elif name == "synthesize_haze_depth":
            samples += [(r(img()), r(pix()), r(bc()), r(bc())), (img(), r(pix(C)), bc(), r(bc()))]
        elif name == "transmission_from_depth":
            samples += [(r(pix()), r(bc())), (r(pix(C)), bc()), (pix(), r(_rand(g, (B, 1))))]
        elif name == "recompose_k":
            samples += [(r(img()), r(pix()), r(bc())), (r(img()), pix(C), r(bc()))]
    samples.append(tuple(a[:0] if isinstance(a, torch.Tensor) else a for a in samples[0]))  # batch 0
    return samples


def _on(args, dev):
    """opcheck samples on the backend's device (CUDA samples for the triton form on a GPU)."""
    return tuple(a.to(dev) if isinstance(a, torch.Tensor) else a for a in args)


@pytest.mark.parametrize("name", OPS)
def test_opcheck(backend_device, name):
    backend, dev = backend_device
    op = FUSED[name].ops()["triton" if backend == "triton" else "native"]
    for args in _opcheck_samples(name):
        torch.library.opcheck(op, _on(args, dev))


def _pipeline(J, t, depth, A, K, backend):
    """All four ops in one graph (forward and backward)."""
    I = F.synthesize_haze(J, A, t=t, backend=backend)
    I2 = F.synthesize_haze(J, A, depth=depth, beta=0.8, backend=backend)
    t2 = F.transmission_from_depth(depth, 0.8, backend=backend)
    R1 = F.recover(I, t, A, t0=0.1, clamp=(0, 1), backend=backend)
    R2 = F.recover(I2, t2, A, backend=backend)
    return R1 + R2 + F.recompose_k(I, K, 1.0, backend=backend)


def test_torch_compile_fullgraph(backend_device):
    backend, device = backend_device
    torch._dynamo.reset()
    g = torch.Generator().manual_seed(2)
    args = [_rand(g, (2, 3, 4, 5)), _rand(g, (2, 1, 4, 5), 0.05, 1), _rand(g, (2, 1, 4, 5), 0, 2),
            _rand(g, (2, 3, 1, 1), 0.6, 1), _rand(g, (2, 3, 4, 5), -1, 1)]
    leaves = [a.to(device).requires_grad_() for a in args]
    ops_asm.resolve_backend(backend, "asm", torch.device(device))  # first-use imports happen outside the trace
    compiled = torch.compile(_pipeline, fullgraph=True, backend="aot_eager")
    out = compiled(*leaves, backend)
    grads = torch.autograd.grad(out.sum(), leaves)
    rleaves = [a.requires_grad_() for a in args]
    ref = _pipeline(*rleaves, "reference")
    rgrads = torch.autograd.grad(ref.sum(), rleaves)
    torch.testing.assert_close(out.cpu(), ref, rtol=1e-6, atol=1e-6)
    for a, b in zip(grads, rgrads):
        torch.testing.assert_close(a.cpu(), b, rtol=1e-6, atol=1e-6)


def test_torch_compile_inductor_cpu():
    """The default (inductor) backend around the C++ ops: forward, one compile."""
    torch._dynamo.reset()
    g = torch.Generator().manual_seed(4)
    args = [_rand(g, (1, 3, 4, 5)), _rand(g, (1, 1, 4, 5), 0.05, 1), _rand(g, (1, 1, 4, 5), 0, 2),
            _rand(g, (1, 3, 1, 1), 0.6, 1), _rand(g, (1, 3, 4, 5), -1, 1)]
    out = torch.compile(_pipeline, fullgraph=True)(*args, "cpu")
    torch.testing.assert_close(out, _pipeline(*args, "reference"), rtol=1e-9, atol=1e-9)


def test_negative_depth_found_next_to_nan():
    depth = torch.rand(1, 1, 4, 4)
    depth[0, 0, 0, 0] = float("nan")
    depth[0, 0, 3, 3] = -1.0
    with pytest.raises(ValueError, match=r"^depth must be >= 0"):
        F.transmission_from_depth(depth, 1.0, backend="cpu")
    depth[0, 0, 3, 3] = 1.0
    assert F.transmission_from_depth(depth, 1.0, backend="cpu").isnan().sum() == 1


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_cpu_exp_accuracy_full_range(dtype):
    """The C++ CPU kernel's exp (a vectorised polynomial for float32, asm_math.h exp_host)
    against torch.exp over the whole range, subnormals, +-inf and NaN included."""
    x = torch.cat([torch.linspace(-110, 100, 200001, dtype=dtype),
                   torch.tensor([float("nan"), float("inf"), -float("inf"), 0.0, -103.9, -104.0, 88.7, 88.73],
                                dtype=dtype)])
    # t = exp(-beta d) with beta = 1, d = -x (the registered op itself does not check signs)
    t = torch.ops.fastdehaze.transmission_from_depth(-x.view(1, 1, 1, -1), torch.ones(1, 1, dtype=dtype)).view(-1)
    ref = torch.exp(x.double())
    tiny = torch.finfo(dtype).tiny
    normal = (ref >= tiny) & (ref <= torch.finfo(dtype).max)
    eps = torch.finfo(dtype).eps
    rel = ((t.double() - ref).abs() / ref)[normal]
    assert rel.max() <= 2 * eps
    assert ((t.double() - ref).abs()[ref < tiny] <= tiny * eps * 2).all()  # subnormal range: absolute
    assert torch.equal(t[~normal & ~(ref < tiny)].isnan(), ref[~normal & ~(ref < tiny)].isnan())
    assert t[-8].isnan() and t[-7] == float("inf") and t[-6] == 0 and t[-5] == 1


@pytest.mark.parametrize("name", CASE_NAMES)
def test_cpu_large_float32_streaming_path(name):
    """float32 outputs of >= 8 MiB take the C++ kernels' streaming-store path (write_block);
    H*W = 703000 puts the channel planes off 64-byte alignment (peeled head and tail)."""
    case = make_case(name, (1, 3, 1000, 703), mc=1)
    case.tensors = {k: v.float().double() for k, v in case.tensors.items()}
    out, ref, _, _ = run_case(case, "cpu", "cpu", dtype=torch.float32, grads=False)
    assert out.nbytes >= 8 << 20 or name == "transmission_from_depth"
    torch.testing.assert_close(out.double(), ref, rtol=2e-6, atol=2e-6)


@pytest.mark.parametrize("name", OPS)
def test_opcheck_backward_ops(backend_device, name):
    """The registered backward ops (C++ and Triton), on gradients of the forward samples."""
    fused = FUSED[name]
    ns = torch.ops.fastdehaze
    backend, dev = backend_device
    op = getattr(ns, f"{name}_backward_triton" if backend == "triton" else f"{name}_backward").default
    for args in _opcheck_samples(name)[:2] + _opcheck_samples(name)[-1:]:
        args = _on(tuple(a.detach() if isinstance(a, torch.Tensor) else a for a in args), dev)
        out = fused(backend, *args)
        grad = torch.randn(out.shape, dtype=out.dtype).to(dev)
        n_grads = {"transmission_from_depth": 2, "synthesize_haze_depth": 4}.get(name, 3)  # needs_* flags
        for flags in [(True,) * n_grads, (False,) + (True,) * (n_grads - 1)]:
            torch.library.opcheck(op, (grad, *args, *flags))
