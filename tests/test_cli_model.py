"""``fastdehaze dehaze --model``, ``models`` and ``synth`` end to end.

The model is ``TinyNet`` of tests/test_model_files.py (a user class following the model
contract, so files name it "test_model_files:TinyNet" and need --trust-code), randomly
initialised and saved; the built-in bases are tested too once they are registered.
"""
import collections
import csv
import os

import numpy as np
import pytest
import torch
from PIL import Image

import fastdehaze.nn as fnn
from fastdehaze import cli, ops
from fastdehaze import io as fio
from fastdehaze.nn import files

from test_model_files import TinyNet


def _hazy_u8(H=24, W=31, seed=0, channels=3):
    rng = np.random.default_rng(seed)
    J = rng.random((H, W, channels))
    t = np.linspace(0.3, 0.9, W)[None, :, None]
    return np.round((J * t + 0.85 * (1 - t)) * 255).astype(np.uint8)


def _save(path, a, **kw):
    Image.fromarray(a if a.shape[-1] != 1 else a[:, :, 0]).save(path, **kw)
    return path


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    torch.manual_seed(0)
    m = TinyNet(4).eval()
    p = tmp_path_factory.mktemp("model") / "tiny.safetensors"
    fnn.save_model(m, p, {"note": "random init"})
    return p


def _run(model_file, *args, trust=True):
    return cli.main(["dehaze", *map(str, args), "--model", str(model_file), "-q"] + (["--trust-code"] if trust else []))


def _expected(model_file, a):
    """The model on the whole 8-bit image, as the CLI must write it (untiled)."""
    m = fnn.load_model(model_file, trust_code=True)
    x = torch.from_numpy(a).permute(2, 0, 1).unsqueeze(0).float() / 255
    with torch.no_grad():
        return fio.quantize(m(x), 8)[0].permute(1, 2, 0).numpy()


def _px(p):
    return fio.read_image(p).pixels.astype(int)


# ---- tiled == untiled ---------------------------------------------------------------------------

def test_tiled_equals_untiled_tiny_model(tmp_path, model_file):
    rng = np.random.default_rng(3)
    ramp = np.linspace(0, 1, 52)[None, :, None] * np.linspace(0.2, 1, 45)[:, None, None]   # tile means differ
    a = np.round(np.clip(ramp * 0.8 + rng.random((45, 52, 3)) * 0.2, 0, 1) * 255).astype(np.uint8)
    _save(tmp_path / "x.png", a)
    # halo 12//2 + 1 = 7: tile 14 is the smallest allowed; 14 gives 4 x 4 tiles here
    assert _run(model_file, tmp_path / "x.png", "-o", tmp_path / "t", "--tile", "14") == 0
    assert _run(model_file, tmp_path / "x.png", "-o", tmp_path / "u", "--tile", "0") == 0
    t, u = _px(tmp_path / "t" / "x.png"), _px(tmp_path / "u" / "x.png")
    assert np.abs(t - u).max() <= 1
    assert np.abs(u - _expected(model_file, a).astype(int)).max() == 0
    # the global context matters: without it, tiles see their own mean colour and differ
    m = fnn.load_model(model_file, trust_code=True)
    x = torch.from_numpy(a).permute(2, 0, 1).unsqueeze(0).float() / 255
    with torch.no_grad():
        own = m(x[..., :14, :14])
    assert not torch.equal(fio.quantize(own, 8), fio.quantize(m(x), 8)[..., :14, :14])


def test_tile_below_twice_the_halo_is_a_usage_error(tmp_path, model_file, capsys):
    _save(tmp_path / "x.png", _hazy_u8())
    with pytest.raises(SystemExit) as e:
        _run(model_file, tmp_path / "x.png", "-o", tmp_path / "o", "--tile", "13")
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("fastdehaze: --tile:") and ">= 14" in err and "receptive_field" in err
    assert not (tmp_path / "o").exists()


def test_real_hazy_tiled_vs_untiled(data_dir, tmp_path, model_file):
    src = data_dir / "real_hazy"
    assert _run(model_file, src, "-o", tmp_path / "t", "--tile", "256") == 0   # 2 x 2 tiles or more for each
    assert _run(model_file, src, "-o", tmp_path / "u", "--tile", "0") == 0
    names = sorted(os.listdir(tmp_path / "u"))
    assert len(names) == len([n for n in os.listdir(src) if n.lower().endswith(fio.IMAGE_EXTENSIONS)]) >= 9
    for n in names:
        t, u = _px(tmp_path / "t" / n), _px(tmp_path / "u" / n)
        assert t.shape == u.shape and np.abs(t - u).max() <= 1, n
    # the model changed the image (not a copy) and the first file is the untiled model output
    first = sorted(p for p in os.listdir(src))[0]
    a = fio.read_image(src / first).pixels
    out = _px(tmp_path / "u" / (os.path.splitext(first)[0] + ".png"))
    assert np.abs(out - _expected(model_file, a).astype(int)).max() == 0
    assert np.abs(out - a.astype(int)).mean() > 1


def _builtins():
    arch = files._architectures()
    out = []
    for name in ("AODNet", "UNet"):
        if name in arch:
            out.append(name)
    if "ProgressiveDehazer" in arch and "UNet" in arch:
        out.append("ProgressiveDehazer(UNet)")
    return out


@pytest.mark.parametrize("name", _builtins() or ["<none>"])
def test_builtin_tiled_equals_untiled(tmp_path, name):
    if name == "<none>":
        pytest.skip("no built-in bases registered yet (fastdehaze.nn.ARCHITECTURES)")
    arch = files._architectures()
    torch.manual_seed(0)
    if name.startswith("ProgressiveDehazer"):
        m = arch["ProgressiveDehazer"](arch["UNet"]())
    else:
        m = arch[name]()
    p = tmp_path / "m.safetensors"
    fnn.save_model(m.eval(), p)
    rf = fnn.load_model(p).receptive_field
    halo = rf // 2 + 1
    tile = 2 * halo
    H, W = tile + 7, tile + 11            # at least 2 x 2 = 4 tiles
    a = _hazy_u8(H=H, W=W, seed=1)
    _save(tmp_path / "x.png", a)
    assert cli.main(["dehaze", str(tmp_path / "x.png"), "-o", str(tmp_path / "t"), "--model", str(p), "-q",
                     "--tile", str(tile)]) == 0
    assert cli.main(["dehaze", str(tmp_path / "x.png"), "-o", str(tmp_path / "u"), "--model", str(p), "-q",
                     "--tile", "0"]) == 0
    assert np.abs(_px(tmp_path / "t" / "x.png") - _px(tmp_path / "u" / "x.png")).max() <= 1


# ---- the I/O cases of the DCP path --------------------------------------------------------------

def test_16bit_grey_alpha_exif(tmp_path, model_file):
    a8 = _hazy_u8(seed=6)
    a16 = a8.astype(np.uint16) * 257 + np.random.default_rng(0).integers(0, 200, a8.shape).astype(np.uint16)
    fio.write_png(tmp_path / "deep.png", a16)
    g = _hazy_u8(seed=8)[:, :, :1]
    _save(tmp_path / "g.png", g)
    rgba = np.dstack([_hazy_u8(seed=7), np.random.default_rng(1).integers(0, 256, (24, 31)).astype(np.uint8)])
    Image.fromarray(rgba).save(tmp_path / "rgba.png")
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(_hazy_u8(H=20, W=33, seed=9)).save(tmp_path / "rot.jpg", exif=exif, quality=100)
    assert _run(model_file, tmp_path / "deep.png", tmp_path / "g.png", tmp_path / "rgba.png", tmp_path / "rot.jpg",
                "-o", tmp_path / "out") == 0
    out = tmp_path / "out"
    # bug-case row 39: 16-bit in, 16-bit out, values in [0, 1] (not whited out), close to the 8-bit run
    d = fio.read_image(out / "deep.png")
    assert d.bits == 16 and len(np.unique(d.pixels % 257)) > 1
    want8 = _expected(model_file, (a16 / 257).round().astype(np.uint8)).astype(int)
    assert np.abs(d.pixels / 257 - want8).max() <= 3
    # grey written back grey (the mean of the three output channels)
    with Image.open(out / "g.png") as im:
        assert im.mode == "L" and im.size == (31, 24)
        got = np.asarray(im).astype(int)
    m = fnn.load_model(model_file, trust_code=True)
    x = torch.from_numpy(np.repeat(g, 3, 2)).permute(2, 0, 1).unsqueeze(0).float() / 255
    with torch.no_grad():
        want = fio.quantize(m(x).mean(1, keepdim=True), 8)[0, 0].numpy().astype(int)
    assert np.abs(got - want).max() == 0
    # alpha kept aside and re-attached
    with Image.open(out / "rgba.png") as im:
        assert im.mode == "RGBA"
        got = np.asarray(im)
    np.testing.assert_array_equal(got[:, :, 3], rgba[:, :, 3])
    assert np.abs(got[:, :, :3].astype(int) - _expected(model_file, rgba[:, :, :3]).astype(int)).max() == 0
    # bug-case row 40: EXIF orientation applied once, tag dropped
    r = fio.read_image(out / "rot.png").pixels
    assert r.shape == (33, 20, 3)
    assert np.abs(r.astype(int) - _expected(model_file, fio.read_image(tmp_path / "rot.jpg").pixels).astype(int)).max() == 0
    with Image.open(out / "rot.png") as im:
        assert im.getexif().get(0x0112) is None


def test_stem_clash_junk_and_no_clobber(tmp_path, model_file, capsys):
    """bug-case row 45: a.jpg and a.png, notes.txt, .DS_Store, a truncated JPEG and a sub-folder."""
    src = tmp_path / "in"
    src.mkdir()
    _save(src / "a.png", _hazy_u8(seed=1))
    _save(src / "a.jpg", _hazy_u8(seed=2), quality=95)
    (src / "notes.txt").write_text("x")
    (src / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    good = (tmp_path / "t.jpg")
    _save(good, _hazy_u8(seed=3), quality=95)
    (src / "trunc.jpg").write_bytes(good.read_bytes()[:300])
    (src / "sub").mkdir()
    _save(src / "sub" / "deep.png", _hazy_u8(seed=4))
    out = tmp_path / "out"
    assert _run(model_file, src, "-o", out) == 1
    err = capsys.readouterr().err
    assert sorted(os.listdir(out)) == ["a.png", "a_1.png"]
    assert not np.array_equal(_px(out / "a.png"), _px(out / "a_1.png"))
    line = [ln for ln in err.splitlines() if "trunc.jpg" in ln]
    assert len(line) == 1 and line[0].count(str(src / "trunc.jpg")) == 1, err
    assert "2 of 3 image(s) written" in err
    before = (out / "a.png").read_bytes()
    assert _run(model_file, src / "a.png", "-o", out) == 1           # exists: never replaced without --overwrite
    assert (out / "a.png").read_bytes() == before and "exists" in capsys.readouterr().err


def test_decompression_bomb_per_file(tmp_path, model_file, monkeypatch, capsys):
    """bug-case row 46 (cheap version): MAX_IMAGE_PIXELS = 1000: 40x40 passes without Pillow's
    warning, 50x50 (above 2 x 1000) is refused with the limit named; the run goes on; --max-pixels."""
    import PIL.Image
    src = tmp_path / "in"
    src.mkdir()
    _save(src / "a40.png", _hazy_u8(H=40, W=40, seed=1))
    _save(src / "b50.png", _hazy_u8(H=50, W=50, seed=2))
    _save(src / "c40.png", _hazy_u8(H=40, W=40, seed=3))
    monkeypatch.setattr(PIL.Image, "MAX_IMAGE_PIXELS", 1000)
    for extra in (["--model", str(model_file), "--trust-code"], ["--patch", "5", "--radius", "4"]):
        out = tmp_path / ("m" if extra[0] == "--model" else "d")
        with _no_warning():
            rc = cli.main(["dehaze", str(src), "-o", str(out), "-q", *extra])
        err = capsys.readouterr().err
        assert rc == 1 and sorted(os.listdir(out)) == ["a40.png", "c40.png"], err
        assert "50x50 = 2,500 pixels is above the limit of 2,000" in err and "--max-pixels" in err
        assert "Traceback" not in err and "DecompressionBomb" not in err
        assert cli.main(["dehaze", str(src / "b50.png"), "-o", str(out), "-q", "--max-pixels", "0", *extra]) == 0
        assert cli.main(["dehaze", str(src / "b50.png"), "-o", str(out / "x"), "-q", "--max-pixels", "2400",
                         *extra]) == 1
    assert PIL.Image.MAX_IMAGE_PIXELS == 1000          # Pillow's setting restored


class _no_warning:
    def __enter__(self):
        import warnings
        self.cm = warnings.catch_warnings(record=True)
        self.rec = self.cm.__enter__()
        warnings.simplefilter("always")

    def __exit__(self, *exc):
        self.cm.__exit__(*exc)
        bomb = [w for w in self.rec if "DecompressionBomb" in type(w.message).__name__]
        assert not bomb, bomb


# ---- usage errors -------------------------------------------------------------------------------

def test_model_without_receptive_field_fails_per_file_when_tiling(tmp_path, capsys):
    from test_model_files import NoConfig
    p = tmp_path / "n.safetensors"
    fnn.save_model(NoConfig(), p)
    _save(tmp_path / "small.png", _hazy_u8(H=10, W=12))
    _save(tmp_path / "big.png", _hazy_u8(H=40, W=41))
    rc = cli.main(["dehaze", str(tmp_path / "small.png"), str(tmp_path / "big.png"), "-o", str(tmp_path / "o"),
                   "--model", str(p), "--trust-code", "-q", "--tile", "32"])
    err = capsys.readouterr().err
    assert rc == 1 and os.listdir(tmp_path / "o") == ["small.png"]
    assert "declares no receptive_field" in err and "--tile 0" in err


@pytest.mark.parametrize("extra, flag, text", [
    (["--patch", "5"], "--patch", "does not apply to --model"),
    (["--save-transmission"], "--save-transmission", "a model gives none"),
    (["--backend", "reference"], "--backend", "the model's own"),
    (["--precision", "fp16"], "--precision", "CUDA only"),
    (["--tile", "-1"], "--tile", ">= 0"),
    (["--max-pixels", "-5"], "--max-pixels", ">= 0"),
])
def test_model_usage_errors(tmp_path, model_file, capsys, extra, flag, text):
    if flag == "--precision" and torch.cuda.is_available():
        pytest.skip("CUDA present: fp16 is allowed")
    _save(tmp_path / "x.png", _hazy_u8())
    with pytest.raises(SystemExit) as e:
        _run(model_file, tmp_path / "x.png", "-o", tmp_path / "o", *extra)
    assert e.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"fastdehaze: {flag}: ") and text in lines[0], lines
    assert not (tmp_path / "o").exists()


def test_model_load_errors_exit_2(tmp_path, model_file, capsys):
    _save(tmp_path / "x.png", _hazy_u8())
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(model_file.read_bytes()[:-10])
    for m, trust, text in ((model_file, False, "--trust-code"), (bad, True, "truncated"),
                           ("no-such-model", True, "not the name of a shipped model")):
        with pytest.raises(SystemExit) as e:
            _run(m, tmp_path / "x.png", "-o", tmp_path / "o", trust=trust)
        assert e.value.code == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("fastdehaze: --model: ") and text in err and "\n" not in err, err
    assert not (tmp_path / "o").exists()


def test_models_command(capsys, model_file, tmp_path, monkeypatch):
    assert cli.main(["models"]) == 0
    out = capsys.readouterr().out
    if not fnn.list_models():
        assert "no trained model ships" in out
    assert cli.main(["models", str(model_file)]) == 0
    out = capsys.readouterr().out
    assert "test_model_files:TinyNet(width=4)" in out and "note=random init" in out and "receptive field 12" in out
    monkeypatch.setattr(files, "_models_dir", lambda: str(tmp_path))
    (tmp_path / "tiny.safetensors").write_bytes(model_file.read_bytes())
    assert cli.main(["models"]) == 0
    assert capsys.readouterr().out.startswith("tiny\n")
    _save(tmp_path / "x.png", _hazy_u8())
    assert cli.main(["dehaze", str(tmp_path / "x.png"), "-o", str(tmp_path / "o"), "--model", "tiny",
                     "--trust-code", "-q"]) == 0
    assert cli.main(["models", str(tmp_path / "x.png")]) == 1


# ---- synth --------------------------------------------------------------------------------------

HazeSample = collections.namedtuple("HazeSample", "hazy t A beta")


class StubSynthesis(torch.nn.Module):
    """Stands in for fastdehaze.nn.HazeSynthesis (the contract) until it exists."""

    def __init__(self, preset="its"):
        super().__init__()
        self.A_range, self.beta_range = {"its": ((0.7, 1.0), (0.6, 1.8)), "ots": ((0.8, 1.0), (0.04, 0.2))}[preset]

    def forward(self, J, depth=None, *, t=None, generator=None):
        B = J.shape[0]
        u = torch.rand(B, 2, generator=generator, device=J.device)
        A = (self.A_range[0] + u[:, 0] * (self.A_range[1] - self.A_range[0])).view(B, 1, 1, 1)
        beta = (self.beta_range[0] + u[:, 1] * (self.beta_range[1] - self.beta_range[0])).view(B, 1, 1, 1)
        t = torch.exp(-beta * depth)
        return HazeSample(J * t + A * (1 - t), t, A, beta)


@pytest.fixture
def synthesis(monkeypatch):
    if not hasattr(fnn, "HazeSynthesis"):
        monkeypatch.setattr(fnn, "HazeSynthesis", StubSynthesis, raising=False)
    return fnn.HazeSynthesis


def _rows(out):
    with open(out / "haze.csv") as f:
        return list(csv.DictReader(f))


def test_synth_layout_csv_physics_seed(tmp_path, synthesis):
    clear, depth = tmp_path / "clear", tmp_path / "depth"
    clear.mkdir(), depth.mkdir()
    J = _hazy_u8(H=20, W=30, seed=1)
    _save(clear / "room_a.png", J)
    _save(clear / "b.png", _hazy_u8(H=12, W=16, seed=2))
    _save(clear / "nodepth.png", _hazy_u8(H=8, W=8, seed=3))
    d = np.tile(np.linspace(10, 250, 30), (20, 1)).astype(np.uint8)
    _save(depth / "room_a.png", d[:, :, None])
    np.save(depth / "b_depth.npy", np.random.default_rng(0).random((6, 8)) + 0.1)   # resized to 12x16
    out = tmp_path / "out"
    rc = cli.main(["synth", str(clear), str(depth), "-o", str(out), "--per-image", "2", "--seed", "7", "-q"])
    assert rc == 1                                   # nodepth.png reported
    assert sorted(os.listdir(out / "clear")) == ["b.png", "room-a.png"]
    assert sorted(os.listdir(out / "hazy")) == ["b_1.png", "b_2.png", "room-a_1.png", "room-a_2.png"]
    np.testing.assert_array_equal(fio.read_image(out / "clear" / "room-a.png").pixels, J)
    rows = {r["hazy"]: r for r in _rows(out)}
    assert set(rows) == {os.path.join("hazy", n) for n in ("b_1.png", "b_2.png", "room-a_1.png", "room-a_2.png")}
    r = rows[os.path.join("hazy", "room-a_1.png")]
    A, beta = float(r["A_r"]), float(r["beta"])
    assert 0.7 <= A <= 1.0 and 0.6 <= beta <= 1.8 and r["clear"] == os.path.join("clear", "room-a.png")
    dn = d.astype(np.float64) / d.max()
    t = np.exp(-beta * dn)[:, :, None]
    want = J / 255 * t + A * (1 - t)
    got = fio.read_image(out / "hazy" / "room-a_1.png").pixels / 255
    assert np.abs(got - want).max() <= 1 / 255 + 1e-6
    assert rows[os.path.join("hazy", "room-a_1.png")]["beta"] != rows[os.path.join("hazy", "room-a_2.png")]["beta"]
    # the same seed gives the same set; the haze of an image does not depend on the other images
    out2 = tmp_path / "out2"
    os.remove(clear / "b.png")
    cli.main(["synth", str(clear), str(depth), "-o", str(out2), "--per-image", "2", "--seed", "7", "-q"])
    assert (out2 / "hazy" / "room-a_2.png").read_bytes() == (out / "hazy" / "room-a_2.png").read_bytes()
    cli.main(["synth", str(clear), str(depth), "-o", str(tmp_path / "out3"), "--seed", "8", "-q"])
    assert (tmp_path / "out3" / "hazy" / "room-a_1.png").read_bytes() != (out / "hazy" / "room-a_1.png").read_bytes()
    # no clobber; a later run into the same folder keeps the earlier rows
    assert cli.main(["synth", str(clear), str(depth), "-o", str(out), "--seed", "7", "-q"]) == 1
    _save(clear / "c.png", _hazy_u8(H=6, W=8, seed=4))
    _save(depth / "c.png", d[:6, :8, None])
    os.remove(clear / "nodepth.png")
    assert cli.main(["synth", str(clear / "c.png"), str(depth), "-o", str(out), "--seed", "7", "-q"]) == 0
    assert len(_rows(out)) == 5 and os.path.join("hazy", "c_1.png") in {r["hazy"] for r in _rows(out)}


def test_depth_from_disparity_rule():
    disp = np.array([[0.0, 1.0], [2.0, 4.0]])
    d = cli.depth_from_map(disp, "disparity")
    q = disp / 4
    want = 1 / (q + 0.05)
    np.testing.assert_allclose(d, want / want.max())
    assert d[0, 0] == 1.0 and d[1, 1] == d.min()                 # zero disparity is the farthest
    np.testing.assert_allclose(cli.depth_from_map(disp, "depth"), disp / 4)
    with pytest.raises(ValueError, match="negative"):
        cli.depth_from_map(-disp, "depth")
    with pytest.raises(ValueError, match="all zeros"):
        cli.depth_from_map(disp * 0, "depth")


def test_synth_shared_depth_data(data_dir, tmp_path, synthesis):
    """../shared/data/depth/da_real: real photos (x.jpg) with depth maps x_depth.jpg (256x256, resized)."""
    src = data_dir / "depth" / "da_real"
    clear = tmp_path / "clear"
    clear.mkdir()
    for n in ("1.jpg", "2.jpg"):
        (clear / n).write_bytes((src / n).read_bytes())
    out = tmp_path / "out"
    for kind in ("depth", "disparity"):
        o = out / kind
        assert cli.main(["synth", str(clear), str(src), "-o", str(o), "--preset", "ots", "--depth-kind", kind,
                         "-q"]) == 0
        assert sorted(os.listdir(o / "hazy")) == ["1_1.png", "2_1.png"]
        for r in _rows(o):
            assert 0.8 <= float(r["A_g"]) <= 1.0 and 0.04 <= float(r["beta"]) <= 0.2
        h = fio.read_image(o / "hazy" / "1_1.png").pixels
        assert h.shape == fio.read_image(src / "1.jpg").pixels.shape


def test_synth_usage_errors(tmp_path, synthesis, capsys):
    (tmp_path / "c").mkdir()
    for argv, flag in ((["--per-image", "0"], "--per-image"), (["--max-pixels", "-1"], "--max-pixels")):
        with pytest.raises(SystemExit) as e:
            cli.main(["synth", str(tmp_path / "c"), str(tmp_path / "c"), "-o", str(tmp_path / "o"), *argv])
        assert e.value.code == 2 and capsys.readouterr().err.startswith(f"fastdehaze: {flag}:")
    with pytest.raises(SystemExit) as e:
        cli.main(["synth", str(tmp_path / "c"), str(tmp_path / "nope"), "-o", str(tmp_path / "o")])
    assert e.value.code == 2 and "DEPTH" in capsys.readouterr().err


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_model_image_autocast_and_channels_last_path(model_file, precision):
    """The code path --precision / channels_last take on CUDA, run on the CPU (CPU autocast has
    bf16): tiled equals untiled, and close to the float32 contiguous result."""
    m = fnn.load_model(model_file, trust_code=True)
    rng = np.random.default_rng(0)
    img = fio.LoadedImage(rng.integers(0, 256, (40, 45, 3)).astype(np.uint8), None, 8)
    ref = cli.model_image(img, m, tile=0, device="cpu")
    whole = cli.model_image(img, m, tile=0, device="cpu", precision=precision, channels_last=True)
    tiled = cli.model_image(img, m, tile=14, device="cpu", precision=precision, channels_last=True)
    assert whole.shape == (40, 45, 3) and whole.dtype == np.uint8
    assert np.abs(tiled.astype(int) - whole.astype(int)).max() <= 1
    assert np.abs(whole.astype(int) - ref.astype(int)).max() <= (0 if precision == "fp32" else 8)


@pytest.mark.parametrize("zipped", [True, False])
def test_training_checkpoint_as_model_says_export_first(tmp_path, model_file, capsys, zipped):
    """A .pt of `fastdehaze train` (torch.save: a zip with data.pkl, or the legacy pickle) given
    to --model: one line saying it is a training checkpoint and how to export it (exit 2)."""
    _save(tmp_path / "x.png", _hazy_u8())
    m = TinyNet(4)
    ckpt = tmp_path / "step_100.pt"
    torch.save({"model": m.state_dict(), "spec": fnn.model_spec(m), "step": 100}, ckpt,
               _use_new_zipfile_serialization=zipped)
    with pytest.raises(SystemExit) as e:
        _run(ckpt, tmp_path / "x.png", "-o", tmp_path / "o")
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and err.startswith(f"fastdehaze: --model: {ckpt} is a training checkpoint"), err
    assert f"python3 -m fastdehaze export {ckpt} model.safetensors" in err, err
    assert not (tmp_path / "o").exists()
    # a corrupt model file, or a zip that is not a torch file, keeps the model-file message
    import zipfile
    other = tmp_path / "other.safetensors"
    with zipfile.ZipFile(other, "w") as z:
        z.writestr("readme.txt", "not a torch file")
    for bad in (other,):
        with pytest.raises(SystemExit):
            _run(bad, tmp_path / "x.png", "-o", tmp_path / "o")
        err = capsys.readouterr().err
        assert "training checkpoint" not in err and "not a readable safetensors file" in err, err


def test_synth_clear_and_depth_in_one_folder(tmp_path, synthesis, capsys):
    """CLEAR == DEPTH (the layout of ../shared/data/depth/da_real: x.jpg with x_depth.*): the
    maps are not hazed as clear images; a "_depth" file without its photo still is one."""
    folder = tmp_path / "photos"
    folder.mkdir()
    d = np.tile(np.linspace(10, 250, 16), (12, 1)).astype(np.uint8)
    _save(folder / "a.png", _hazy_u8(H=12, W=16, seed=1))
    _save(folder / "a_depth.png", d[:, :, None])
    _save(folder / "b.png", _hazy_u8(H=12, W=16, seed=2))
    _save(folder / "b_depth.png", d[:, :, None])
    np.save(folder / "b.npy", d.astype(np.float32))          # not an image: never a clear file
    _save(folder / "lone_depth.png", _hazy_u8(H=12, W=16, seed=3))   # no "lone": a photo
    _save(folder / "lone_depth_depth.png", d[:, :, None])
    out = tmp_path / "out"
    rc = cli.main(["synth", str(folder), str(folder), "-o", str(out), "-q"])
    err = capsys.readouterr().err
    assert rc == 0, err
    assert sorted(os.listdir(out / "clear")) == ["a.png", "b.png", "lone-depth.png"], err
    assert sorted(os.listdir(out / "hazy")) == ["a_1.png", "b_1.png", "lone-depth_1.png"]
    assert "depth maps of other images" in err and "3 file(s)" in err, err
