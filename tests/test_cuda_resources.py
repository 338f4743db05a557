"""benchmarks/results/cuda_ptxas_sm90.json (scripts/cuda_resources.py): ptxas resource usage of
every CUDA kernel for sm_90. Checks the sm_90 limits and the absence of local-memory spills, that
the JSON was generated from the current sources with setup.py's nvcc flags, and (when the CUDA
extensions are built) that its kernels are exactly those of the built _cuda_*.so files."""
import hashlib
import json
import pathlib
import re
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
JSON = ROOT / "benchmarks" / "results" / "cuda_ptxas_sm90.json"
REGEN = "regenerate with: python3 scripts/cuda_resources.py"
sys.path.insert(0, str(ROOT / "scripts"))
import cuda_resources  # noqa: E402


@pytest.fixture(scope="module")
def doc():
    if not JSON.exists():
        pytest.skip("no cuda_ptxas_sm90.json")
    return json.loads(JSON.read_text())


def test_limits_and_no_spills(doc):
    rows = doc["kernels"]
    assert doc["arch"] == "sm_90" and len(rows) >= 100
    families = {r["family"] for r in rows}
    assert families == {p.stem for p in (ROOT / "csrc" / "cuda").glob("*.cu")}
    for r in rows:
        assert r["spill_stores"] == 0 and r["spill_loads"] == 0, r["kernel"]
        assert r["stack_frame"] == 0, r["kernel"]  # no local memory at all
        assert 0 < r["registers"] <= 255, r["kernel"]
        assert r["registers"] * r["threads"] <= 65536, r["kernel"]  # one block fits an SM's register file
        assert r["shared_bytes"] + r.get("dynamic_shared_max_bytes", 0) <= 227 * 1024, r["kernel"]
    assert doc["summary"]["kernels_with_spills"] == []
    assert doc["summary"]["max_registers"] == max(r["registers"] for r in rows)


def test_generated_from_current_sources(doc):
    for rel, digest in doc["sources"].items():
        path = ROOT / rel
        assert path.exists(), f"{rel} is gone; {REGEN}"
        assert hashlib.sha256(path.read_bytes()).hexdigest() == digest, f"{rel} changed since the JSON; {REGEN}"
    for cu in (ROOT / "csrc" / "cuda").glob("*.cu"):
        assert str(cu.relative_to(ROOT)) in doc["sources"], f"{cu.name} not in the JSON; {REGEN}"


def test_flags_are_setup_flags(doc):
    flags = cuda_resources.setup_nvcc_flags()
    assert doc["flags"][:len(flags)] == flags, REGEN
    assert "--use_fast_math" not in doc["flags"]  # README "GPU numerics and determinism"


def test_normalise_mangled():
    a = "_ZN10fastdehaze43_GLOBAL__N__df1f4e57_6_asm_cu_bd78c9fa_882623recover_backward_kernelIfEEvv"
    b = "_ZN10fastdehaze43_GLOBAL__N__0123abcd_6_asm_cu_00000000_111123recover_backward_kernelIfEEvv"
    assert cuda_resources.normalise_mangled(a) == cuda_resources.normalise_mangled(b) == (
        "_ZN10fastdehaze23recover_backward_kernelIfEEvv")


def test_parse_ptxas():
    text = """ptxas info    : Compiling entry function '_Z1kv' for 'sm_90'
ptxas info    : Function properties for _Z1kv
    8 bytes stack frame, 4 bytes spill stores, 4 bytes spill loads
ptxas info    : Used 40 registers, used 1 barriers, 1024 bytes smem, 400 bytes cmem[0]
"""
    k = cuda_resources.parse_ptxas(text)["_Z1kv"]
    assert k == dict(registers=40, stack_frame=8, spill_stores=4, spill_loads=4, shared_bytes=1024, barriers=1)


@pytest.mark.parametrize("family", sorted(p.stem for p in (ROOT / "csrc" / "cuda").glob("*.cu")))
def test_kernels_match_built_extension(doc, family):
    sos = sorted((ROOT / "fastdehaze").glob(f"_cuda_{family}.*.so"))
    if not sos:
        pytest.skip(f"_cuda_{family} not built")
    built = {cuda_resources.normalise_mangled(m.decode())
             for m in re.findall(rb"_ZN10fastdehaze[A-Za-z0-9_]+", sos[0].read_bytes())}
    recorded = {r["mangled"] for r in doc["kernels"] if r["family"] == family}
    assert recorded, family
    missing = recorded - built
    assert not missing, f"kernels in the JSON but not in {sos[0].name} (rebuild it, or {REGEN}): {sorted(missing)[:3]}"
    # entry functions: the PTX names their parameters <kernel>_param_<i>
    built_kernels = {n[:-len("_param_0")] for n in built if n.endswith("_param_0")}
    assert len(built_kernels) >= len(recorded) // 2, "no PTX parameter names found"
    extra = built_kernels - recorded
    assert not extra, f"kernels in {sos[0].name} missing from the JSON ({REGEN}): {sorted(extra)[:3]}"
