"""Model files (fastdehaze.nn.files): round trip, corrupt / edited / wrong files refused whole,
trust_code, shipped names.

``TinyNet`` below is a user model that follows the model contract (config, receptive_field,
pad_multiple, value_range, global_context, forward(x, context=)); tests/test_cli_model.py
imports it too.
"""
import json
import os
import re
import struct

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import fastdehaze.nn as fnn
from fastdehaze.nn import files


class TinyNet(nn.Module):
    """A contract-following test model: a global mean colour (global_context), a stride-2 pooling
    (pad_multiple 2, reflect-padded at the right/bottom and cropped back) and three 3x3 convs.
    Receptive field: 3 (conv) + 1 (pool) + 4 (conv at stride 2) + 2 (conv) = 10; 12 declared."""

    receptive_field = 12
    pad_multiple = 2
    value_range = (0.0, 1.0)

    def __init__(self, width: int = 4):
        super().__init__()
        self.width = width
        self.c1 = nn.Conv2d(3, width, 3, padding=1)
        self.c2 = nn.Conv2d(width, width, 3, padding=1)
        self.c3 = nn.Conv2d(2 * width, 3, 3, padding=1)
        self.register_buffer("gain", torch.tensor([1.0, 0.9, 1.1]))

    def config(self):
        return {"width": self.width}

    def global_context(self, I_full):
        return {"mean": I_full.mean((2, 3), keepdim=True)}

    def forward(self, I, context=None):
        ctx = self.global_context(I) if context is None else context
        H, W = I.shape[-2:]
        x = F.pad(I - ctx["mean"], (0, W % 2, 0, H % 2), mode="replicate")
        a = torch.relu(self.c1(x))
        b = torch.relu(self.c2(F.avg_pool2d(a, 2)))
        b = F.interpolate(b, scale_factor=2, mode="nearest")
        y = self.c3(torch.cat([a, b], 1))[..., :H, :W]
        return (I + 0.2 * torch.tanh(y) * self.gain.view(1, 3, 1, 1)).clamp(0, 1)


class NoConfig(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 1)

    def forward(self, x):
        return self.conv(x)


def _tiny(seed=0, width=4):
    torch.manual_seed(seed)
    return TinyNet(width).eval()


@pytest.fixture
def saved(tmp_path):
    m = _tiny()
    p = tmp_path / "tiny.safetensors"
    fnn.save_model(m, p, {"steps": 3, "data": "synthetic", "psnr": 21.5})
    return m, p


def _header_len(p):
    return struct.unpack("<Q", p.read_bytes()[:8])[0]


def _rewrite(p, tensors, meta, rehash):
    """Write a safetensors file with these tensors/metadata (optionally with a recomputed hash)."""
    from safetensors.torch import save
    meta = dict(meta)
    if rehash:
        meta["sha256"] = files._digest(tensors, meta)
    p.write_bytes(save(tensors, metadata=meta))


def _contents(p):
    from safetensors import safe_open
    with safe_open(str(p), "pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}, dict(f.metadata())


# ---- round trip ---------------------------------------------------------------------------------

def test_round_trip_bit_identical(saved):
    m, p = saved
    x = torch.rand(2, 3, 17, 33, generator=torch.Generator().manual_seed(1))
    with pytest.raises(ValueError, match="trust_code=True"):
        fnn.load_model(p)
    m2 = fnn.load_model(p, trust_code=True)
    assert type(m2) is TinyNet and not m2.training
    with torch.no_grad():
        assert torch.equal(m(x), m2(x))
    for k, v in m.state_dict().items():
        assert torch.equal(v, m2.state_dict()[k]), k
    info = fnn.model_info(p)
    assert info["spec"] == {"name": f"{TinyNet.__module__}:TinyNet", "args": {"width": 4}}
    assert info["training"] == {"steps": 3, "data": "synthetic", "psnr": 21.5}
    assert info["receptive_field"] == 12 and info["pad_multiple"] == 2 and info["value_range"] == [0.0, 1.0]
    assert info["fastdehaze_version"] and len(info["sha256"]) == 64 and info["format"] == fnn.MODEL_FORMAT
    assert info["parameters"] == sum(v.numel() for v in m.state_dict().values())
    assert m2.model_file_info["sha256"] == info["sha256"]
    assert not [n for n in os.listdir(p.parent) if n != "tiny.safetensors"]   # no temporary file left


def test_builtin_name_loads_without_trust(tmp_path, monkeypatch):
    monkeypatch.setattr(files, "_architectures", lambda: {"TinyNet": TinyNet})
    m = _tiny(3, width=5)
    p = tmp_path / "b.safetensors"
    fnn.save_model(m, p)
    assert fnn.model_spec(m) == {"name": "TinyNet", "args": {"width": 5}}
    m2 = fnn.load_model(p)                      # a built-in name: no code imported, no trust needed
    x = torch.rand(1, 3, 9, 10)
    with torch.no_grad():
        assert torch.equal(m(x), m2(x))
    assert fnn.model_info(p)["training"] == {}


def test_half_model_keeps_its_dtype(tmp_path):
    m = _tiny(4).to(torch.bfloat16)
    p = tmp_path / "h.safetensors"
    fnn.save_model(m, p)
    m2 = fnn.load_model(p, trust_code=True)
    assert next(m2.parameters()).dtype == torch.bfloat16
    x = torch.rand(1, 3, 8, 8).to(torch.bfloat16)
    with torch.no_grad():
        assert torch.equal(m(x), m2(x))


def test_wrappers_and_no_config(tmp_path):
    m = _tiny(5)
    assert fnn.model_spec(torch.compile(m)) == fnn.model_spec(m)
    p = tmp_path / "c.safetensors"
    fnn.save_model(torch.compile(m), p)            # compiled wrapper: keys without _orig_mod.
    assert fnn.load_model(p, trust_code=True).state_dict().keys() == m.state_dict().keys()
    n = NoConfig()
    assert fnn.model_spec(n) == {"name": f"{NoConfig.__module__}:NoConfig", "args": {}}
    fnn.save_model(n, tmp_path / "n.safetensors")
    assert fnn.model_info(tmp_path / "n.safetensors")["receptive_field"] is None
    x = torch.rand(1, 3, 4, 4)
    with torch.no_grad():
        assert torch.equal(fnn.load_model(tmp_path / "n.safetensors", trust_code=True)(x), n(x))


def test_save_does_not_touch_the_global_rng(tmp_path):
    m = _tiny()
    torch.manual_seed(123)
    fnn.save_model(m, tmp_path / "a.safetensors")
    fnn.load_model(tmp_path / "a.safetensors", trust_code=True)
    a = torch.rand(3)
    torch.manual_seed(123)
    assert torch.equal(a, torch.rand(3))


def test_bad_save_arguments(tmp_path):
    class Local(nn.Module):
        pass

    with pytest.raises(ValueError, match="function"):
        fnn.save_model(Local(), tmp_path / "l.safetensors")
    with pytest.raises(TypeError, match="metadata"):
        fnn.save_model(_tiny(), tmp_path / "m.safetensors", {"when": object()})
    with pytest.raises(TypeError, match="metadata"):
        fnn.save_model(_tiny(), tmp_path / "m.safetensors", {"loss": float("nan")})
    with pytest.raises(TypeError, match="metadata"):
        fnn.save_model(_tiny(), tmp_path / "m.safetensors", ["not", "a", "dict"])
    with pytest.raises(TypeError, match="model"):
        fnn.save_model("nope", tmp_path / "m.safetensors")

    class WrongConfig(TinyNet):   # config() does not describe the module: caught when saving
        def config(self):
            return {"width": self.width + 1}

    WrongConfig.__qualname__ = "WrongConfig"
    globals()["WrongConfig"] = WrongConfig
    with pytest.raises(ValueError, match="rebuilds a different architecture"):
        fnn.save_model(WrongConfig(), tmp_path / "w.safetensors")
    assert not (tmp_path / "m.safetensors").exists() and not (tmp_path / "w.safetensors").exists()


# ---- corrupt, edited, wrong files ---------------------------------------------------------------

def _refused(p, match, trust_code=True):
    with pytest.raises(files.ModelFileError, match=match) as e:
        fnn.load_model(p, trust_code=trust_code)
    assert str(p) in str(e.value)
    return str(e.value)


def test_truncated_file_refused(saved, tmp_path):
    _, p = saved
    data = p.read_bytes()
    n = _header_len(p)
    cuts = sorted({0, 1, 7, 8, 9, 8 + n // 2, 8 + n - 1, 8 + n, 8 + n + 1, (8 + n + len(data)) // 2, len(data) - 1})
    for cut in cuts:
        q = tmp_path / f"cut{cut}.safetensors"
        q.write_bytes(data[:cut])
        _refused(q, "truncated or corrupt")
        with pytest.raises(files.ModelFileError):
            fnn.model_info(q)


def test_every_header_byte_flip_refused(saved, tmp_path):
    _, p = saved
    data = bytearray(p.read_bytes())
    n = _header_len(p)
    q = tmp_path / "flip.safetensors"
    for i in range(8 + n):
        d = bytearray(data)
        d[i] ^= 0x01
        q.write_bytes(bytes(d))
        with pytest.raises(files.ModelFileError) as e:
            fnn.load_model(q, trust_code=True)
        assert str(q) in str(e.value), (i, str(e.value))


def test_weight_byte_flip_refused(saved, tmp_path):
    _, p = saved
    data = p.read_bytes()
    start = 8 + _header_len(p)
    q = tmp_path / "w.safetensors"
    for i in (start, start + 1, (start + len(data)) // 2, len(data) - 1):
        d = bytearray(data)
        d[i] ^= 0x10
        q.write_bytes(bytes(d))
        _refused(q, "SHA-256 mismatch")


def test_missing_tensor_refused(saved, tmp_path):
    _, p = saved
    tensors, meta = _contents(p)
    dropped = dict(tensors)
    del dropped["c2.weight"]
    q = tmp_path / "drop.safetensors"
    _rewrite(q, dropped, meta, rehash=False)
    _refused(q, "SHA-256 mismatch")
    _rewrite(q, dropped, meta, rehash=True)      # a consistent file that lacks a tensor
    msg = _refused(q, "missing tensors")
    assert "c2.weight" in msg
    extra = dict(tensors, stray=torch.zeros(2))
    _rewrite(q, extra, meta, rehash=True)
    assert "stray" in _refused(q, "unexpected tensors")


def test_changed_spec_refused(saved, tmp_path):
    _, p = saved
    tensors, meta = _contents(p)
    spec = json.loads(meta["spec"])
    spec["args"]["width"] = 5
    meta2 = dict(meta, spec=json.dumps(spec))
    q = tmp_path / "spec.safetensors"
    _rewrite(q, tensors, meta2, rehash=False)
    _refused(q, "SHA-256 mismatch")
    _rewrite(q, tensors, meta2, rehash=True)     # wrong architecture for these weights
    msg = _refused(q, "do not fit the architecture")
    assert "shape mismatch" in msg and "c1.weight" in msg
    _rewrite(q, tensors, dict(meta, spec=json.dumps({"name": "NoSuchNet", "args": {}})), rehash=True)
    with pytest.raises(ValueError, match="NoSuchNet.*not a built-in architecture"):
        fnn.load_model(q)
    _rewrite(q, tensors, dict(meta, spec="[1, 2"), rehash=True)
    _refused(q, "not valid JSON")
    _rewrite(q, tensors, {k: v for k, v in meta.items() if k != "training"}, rehash=True)
    _refused(q, "lacks training")


def test_not_a_model_file(tmp_path):
    from safetensors.torch import save_file
    q = tmp_path / "plain.safetensors"
    save_file({"w": torch.zeros(3)}, str(q))
    _refused(q, "not a fastdehaze model file")
    q.write_bytes(b"")
    _refused(q, "truncated or corrupt")
    with pytest.raises(files.ModelFileError, match="not a file"):
        fnn.load_model(tmp_path)


def test_trust_code_refusal_imports_nothing(saved, tmp_path):
    _, p = saved
    tensors, meta = _contents(p)
    q = tmp_path / "evil.safetensors"
    _rewrite(q, tensors, dict(meta, spec=json.dumps({"name": "fastdehaze_evil_module_x:Net", "args": {}})),
             rehash=True)
    with pytest.raises(ValueError, match=r"trust_code=True.*--trust-code") as e:
        fnn.load_model(q)
    assert "fastdehaze_evil_module_x" in str(e.value) and str(q) in str(e.value)
    with pytest.raises(ValueError, match="cannot import module"):
        fnn.load_model(q, trust_code=True)
    with pytest.raises(ValueError, match="trust_code=True"):
        fnn.build_model({"name": "os:system", "args": {}})
    with pytest.raises(ValueError, match="not an nn.Module class"):
        fnn.build_model({"name": "os:getcwd", "args": {}}, trust_code=True)
    with pytest.raises(ValueError, match="spec must be a dict"):
        fnn.build_model({"name": "TinyNet"})


# ---- names --------------------------------------------------------------------------------------

def test_shipped_names(tmp_path, monkeypatch, saved):
    _, p = saved
    with pytest.raises(ValueError, match="not the name of a shipped model"):
        fnn.load_model("no-such-model")
    monkeypatch.setattr(files, "_models_dir", lambda: str(tmp_path / "models"))
    assert fnn.list_models() == []
    with pytest.raises(ValueError, match="none yet"):
        fnn.load_model("tiny")
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "tiny.safetensors").write_bytes(p.read_bytes())
    (tmp_path / "models" / "README.md").write_text("x")
    assert fnn.list_models() == ["tiny"]
    assert type(fnn.load_model("tiny", trust_code=True)) is TinyNet
    with pytest.raises(ValueError, match=r"shipped: tiny"):
        fnn.load_model("tiny2")


def test_real_models_folder_lists_only_model_files():
    names = fnn.list_models()
    d = files._models_dir()
    assert os.path.isdir(d)
    assert all(os.path.isfile(os.path.join(d, n + ".safetensors")) for n in names)
    for n in names:                                 # every shipped file loads and verifies
        info = fnn.model_info(n)
        assert info["spec"]["name"] in files._architectures(), info["spec"]


# ---- built-in architectures (once they exist) ---------------------------------------------------

def _builtins():
    return sorted(files._architectures())


@pytest.mark.parametrize("name", _builtins() or ["<none>"])
def test_builtin_round_trip(tmp_path, name):
    if name == "<none>":
        pytest.skip("no built-in architectures registered yet (fastdehaze.nn.ARCHITECTURES)")
    cls = files._architectures()[name]
    torch.manual_seed(0)
    try:
        m = cls().eval()
    except TypeError as e:
        if "base" not in str(e) or "UNet" not in files._architectures():
            pytest.skip(f"{name} needs constructor arguments: {e}")
        m = cls(files._architectures()["UNet"]()).eval()     # ProgressiveDehazer & co: wrap a built-in base
    p = tmp_path / f"{name}.safetensors"
    fnn.save_model(m, p, {"test": True})
    m2 = fnn.load_model(p)
    assert type(m2) is cls and fnn.model_spec(m2) == fnn.model_spec(m)
    x = torch.rand(1, 3, 37, 45, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        a, b = m(x), m2(x)
    a, b = (a[0], b[0]) if isinstance(a, tuple) else (a, b)
    assert torch.equal(a, b)
    assert re.fullmatch(r"[0-9a-f]{64}", fnn.model_info(p)["sha256"])
