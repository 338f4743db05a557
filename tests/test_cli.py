"""The ``fastdehaze`` command end to end on tiny generated images (and on the shared SOTS pairs).

Set FASTDEHAZE_CLI_TEST_BACKEND (e.g. "reference") to run these with another backend than the
default "auto".
"""
import os
import stat
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from fastdehaze import cli, ops
from fastdehaze import io as fio

BACKEND = os.environ.get("FASTDEHAZE_CLI_TEST_BACKEND", "auto")
FAST = ["--patch", "5", "--radius", "4", "--top", "0.01", "--quiet", "--backend", BACKEND]
KW = dict(patch=5, r=4, top=0.01)


def _hazy_u8(H=24, W=31, seed=0, channels=3):
    rng = np.random.default_rng(seed)
    J = rng.random((H, W, channels))
    t = np.linspace(0.3, 0.9, W)[None, :, None]
    return np.round((J * t + 0.85 * (1 - t)) * 255).astype(np.uint8)


def _save(path, a, **kw):
    Image.fromarray(a if a.shape[-1] not in (1,) else a[:, :, 0]).save(path, **kw)
    return path


def _run(*args):
    return cli.main(["dehaze", *map(str, args), *FAST])


def _expected_u8(a):
    """What the CLI must write for an 8-bit RGB array: the op on the float image, quantised."""
    x = torch.from_numpy(a).permute(2, 0, 1).unsqueeze(0).double() / 255
    return fio.quantize(ops.dehaze_dcp(x, **KW, backend="reference"), 8)[0].permute(1, 2, 0).numpy()


def _read(p):
    return fio.read_image(p)


def test_file_folder_and_glob(tmp_path):
    d1, d2, out = tmp_path / "d1", tmp_path / "d2", tmp_path / "out"
    d1.mkdir(), d2.mkdir()
    a = _hazy_u8(seed=1)
    _save(d1 / "a.png", a)
    _save(d1 / "b.jpg", _hazy_u8(seed=2), quality=95)
    (d1 / "notes.txt").write_text("not an image")
    _save(d2 / "c.png", _hazy_u8(seed=3))
    _save(d2 / "e.png", _hazy_u8(seed=4))
    single = _save(tmp_path / "f.png", _hazy_u8(seed=5))
    assert _run(single, d1, str(d2) + "/c*.png", "-o", out) == 0
    assert sorted(os.listdir(out)) == ["a.png", "b.png", "c.png", "f.png"]
    got = _read(out / "a.png")
    assert got.bits == 8 and got.pixels.shape == a.shape
    assert np.abs(got.pixels.astype(int) - _expected_u8(a).astype(int)).max() <= 1


def test_name_clash_and_never_over_an_input(tmp_path):
    _save(tmp_path / "a.png", _hazy_u8(seed=1))
    _save(tmp_path / "a.jpg", _hazy_u8(seed=2), quality=95)
    before = (tmp_path / "a.png").read_bytes()
    # output folder = input folder: a.png is an input, so the outputs are a_1.png and a_2.png
    assert _run(tmp_path / "a.jpg", tmp_path / "a.png", "-o", tmp_path, "--overwrite") == 0
    assert (tmp_path / "a.png").read_bytes() == before
    assert (tmp_path / "a_1.png").exists() and (tmp_path / "a_2.png").exists()
    out = tmp_path / "out"
    assert _run(tmp_path / "a.jpg", tmp_path / "a.png", "-o", out) == 0
    assert sorted(os.listdir(out)) == ["a.png", "a_1.png"]
    # input order decides: a.jpg came first
    assert _read(out / "a.png").pixels.shape == _read(out / "a_1.png").pixels.shape
    assert cli.plan_outputs(["x/a.jpg", "y/a.png", "z/a_1.png"], "o") == [
        (os.path.join("o", "a.png"), None), (os.path.join("o", "a_1.png"), None), (os.path.join("o", "a_1_1.png"), None)]


def test_corrupt_file_reported_others_written(tmp_path, capsys):
    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    _save(src / "good.png", _hazy_u8())
    (src / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    (src / "empty.jpg").write_bytes(b"")
    rc = _run(src, tmp_path / "missing.png", str(tmp_path / "none*.png"), "-o", out)
    err = capsys.readouterr().err
    assert rc == 1
    assert "bad.png" in err and "empty.jpg" in err and "missing.png" in err and "none*.png" in err
    assert os.listdir(out) == ["good.png"]           # and no temporary files left behind


def test_no_overwrite_without_flag(tmp_path, capsys):
    p = _save(tmp_path / "a.png", _hazy_u8())
    out = tmp_path / "out"
    out.mkdir()
    (out / "a.png").write_bytes(b"keep me")
    assert _run(p, "-o", out) == 1
    assert "exists" in capsys.readouterr().err
    assert (out / "a.png").read_bytes() == b"keep me"
    assert _run(p, "-o", out, "--overwrite") == 0
    assert _read(out / "a.png").pixels.shape == (24, 31, 3)
    assert sorted(os.listdir(out)) == ["a.png"]


def test_write_atomic_no_clobber(tmp_path):
    p = tmp_path / "x.png"
    p.write_bytes(b"old")
    with pytest.raises(FileExistsError, match="exists"):
        cli.write_atomic(str(p), np.zeros((2, 2, 3), np.uint8))
    assert p.read_bytes() == b"old" and os.listdir(tmp_path) == ["x.png"]
    cli.write_atomic(str(p), np.zeros((2, 2, 3), np.uint8), overwrite=True)
    assert _read(p).pixels.shape == (2, 2, 3)


def test_16bit_in_16bit_out(tmp_path):
    a8 = _hazy_u8(seed=6)
    a16 = a8.astype(np.uint16) * 257 + np.random.default_rng(0).integers(0, 200, a8.shape).astype(np.uint16)
    fio.write_png(tmp_path / "deep.png", a16)
    assert _run(tmp_path / "deep.png", "-o", tmp_path / "out") == 0
    got = _read(tmp_path / "out" / "deep.png")
    assert got.bits == 16 and got.pixels.dtype == np.uint16
    x = torch.from_numpy(a16.astype(np.float64) / 65535).permute(2, 0, 1).unsqueeze(0)
    want = fio.quantize(ops.dehaze_dcp(x, **KW, backend="reference"), 16)[0].permute(1, 2, 0).numpy()
    assert np.abs(got.pixels.astype(int) - want.astype(int)).max() <= 3   # float32 vs float64 at 16 bits
    assert len(np.unique(got.pixels % 257)) > 1                           # not 8-bit data scaled up


def test_rgba_alpha_kept(tmp_path):
    a = _hazy_u8(seed=7)
    alpha = np.random.default_rng(1).integers(0, 256, a.shape[:2]).astype(np.uint8)
    Image.fromarray(np.dstack([a, alpha])).save(tmp_path / "rgba.png")
    assert _run(tmp_path / "rgba.png", "-o", tmp_path / "out") == 0
    with Image.open(tmp_path / "out" / "rgba.png") as im:
        assert im.mode == "RGBA"
        got = np.asarray(im)
    np.testing.assert_array_equal(got[:, :, 3], alpha)
    # the prior never saw alpha: the colour equals the dehazed RGB image alone
    assert np.abs(got[:, :, :3].astype(int) - _expected_u8(a).astype(int)).max() <= 1


def test_grayscale_written_back_grey(tmp_path):
    g = _hazy_u8(seed=8)[:, :, :1]
    _save(tmp_path / "g.png", g)
    assert _run(tmp_path / "g.png", "-o", tmp_path / "out", "--save-transmission") == 0
    with Image.open(tmp_path / "out" / "g.png") as im:
        assert im.mode == "L"
        got = np.asarray(im)
    want = _expected_u8(np.repeat(g, 3, axis=2))
    assert np.abs(got.astype(int) - want[:, :, 0].astype(int)).max() <= 1
    with Image.open(tmp_path / "out" / "g_t.png") as im:
        assert im.mode == "L" and im.size == (31, 24)


def test_exif_orientation_honoured(tmp_path):
    a = _hazy_u8(H=20, W=33, seed=9)
    exif = Image.Exif()
    exif[0x0112] = 6   # rotate 90 degrees clockwise to display
    Image.fromarray(a).save(tmp_path / "rot.jpg", exif=exif, quality=100)
    assert _run(tmp_path / "rot.jpg", "-o", tmp_path / "out") == 0
    got = _read(tmp_path / "out" / "rot.png").pixels
    assert got.shape == (33, 20, 3)
    upright = _read(tmp_path / "rot.jpg").pixels
    assert np.abs(got.astype(int) - _expected_u8(upright).astype(int)).max() <= 1
    with Image.open(tmp_path / "out" / "rot.png") as im:
        assert im.getexif().get(0x0112) is None


def test_tiled_equals_untiled_through_cli(tmp_path):
    a = _hazy_u8(H=45, W=52, seed=10)
    _save(tmp_path / "big.png", a)
    # halo at patch 5, radius 4: 2 + 8 + 1 = 11, so 22 is the smallest tile allowed (3 x 3 tiles here)
    assert _run(tmp_path / "big.png", "-o", tmp_path / "t", "--tile", "22", "--save-transmission") == 0
    assert _run(tmp_path / "big.png", "-o", tmp_path / "u", "--tile", "0", "--save-transmission") == 0
    for name in ("big.png", "big_t.png"):
        tiled, whole = _read(tmp_path / "t" / name).pixels, _read(tmp_path / "u" / name).pixels
        assert np.abs(tiled.astype(int) - whole.astype(int)).max() <= 1   # equal up to a rounding flip


def _usage_error(capsys, argv):
    """Run the CLI with ``argv``; assert exit status 2 and a one-line message; return that line."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        cli.main(argv)
    assert e.value.code == 2, (argv, e.value.code)
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("fastdehaze: "), err
    return lines[0]


@pytest.mark.parametrize("opt, value", [
    ("--patch", "4"), ("--patch", "-3"), ("--top", "2"), ("--top", "-0.1"), ("--eps", "0"), ("--t0", "0"),
    ("--t0", "1.5"), ("--omega", "nan"), ("--omega", "1.01"), ("--radius", "-1"), ("--tile", "-5"),
    ("--device", "gpu"), ("--device", "cuda:x"), ("--device", "meta")])
def test_bad_parameter_values_exit_2_before_any_file(tmp_path, capsys, opt, value):
    p = _save(tmp_path / "a.png", _hazy_u8())
    out = tmp_path / "out"
    line = _usage_error(capsys, ["dehaze", str(p), "-o", str(out), "--quiet", opt, value])
    assert line.startswith(f"fastdehaze: {opt}: ") and value in line, line
    assert not out.exists()          # checked before the output folder and any input


def test_cuda_device_without_gpu_exits_2(tmp_path, capsys):
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    p = _save(tmp_path / "a.png", _hazy_u8())
    for dev in ("cuda", "cuda:0"):
        line = _usage_error(capsys, ["dehaze", str(p), "-o", str(tmp_path / "out"), "--device", dev])
        assert "--device" in line and "no CUDA device" in line
    assert not (tmp_path / "out").exists()


def test_bad_arguments(tmp_path, capsys):
    assert "--patch" in _usage_error(capsys, ["dehaze", "x.png", "-o", str(tmp_path), "--patch", "4"])
    assert "--radius" in _usage_error(capsys, ["dehaze", "x.png", "-o", str(tmp_path), "--radius", "-2"])
    assert "--tile" in _usage_error(capsys, ["dehaze", "x.png", "-o", str(tmp_path), "--tile", "-1"])
    with pytest.raises(SystemExit) as e:   # argparse: missing -o
        cli.main(["dehaze", "x.png"])
    assert e.value.code == 2
    assert "-o/--output" in capsys.readouterr().err


def test_bad_value_exit_status_through_python_m(tmp_path):
    r = subprocess.run([sys.executable, "-m", "fastdehaze", "dehaze", "x.png", "-o", str(tmp_path / "o"),
                        "--eps", "0"], capture_output=True, text=True)
    assert r.returncode == 2 and r.stderr.strip().splitlines() == [
        "fastdehaze: --eps: eps must be in (0.0, inf], got 0.0"], r.stderr


def test_output_folder_that_cannot_be_created(tmp_path, capsys):
    p = _save(tmp_path / "a.png", _hazy_u8())
    # OUTDIR is an existing file (FileExistsError), or below a file (NotADirectoryError)
    for outdir in (p, tmp_path / "a.png" / "sub"):
        line = _usage_error(capsys, ["dehaze", str(p), "-o", str(outdir), *FAST])
        assert line.startswith("fastdehaze: -o/--output: cannot create the output folder")
        assert str(outdir) in line and "Traceback" not in line
    if os.path.ismount("/sys"):       # sysfs: no new folders there, not even for root
        line = _usage_error(capsys, ["dehaze", str(p), "-o", "/sys/fastdehaze_x", *FAST])
        assert "/sys/fastdehaze_x" in line
    assert _read(p).pixels.shape == (24, 31, 3)   # the input is untouched


@pytest.mark.parametrize("umask", [0o022, 0o027, 0o002])
def test_output_file_mode_follows_umask(tmp_path, umask):
    old = os.umask(umask)
    try:
        cli.write_atomic(str(tmp_path / "x.png"), np.zeros((2, 2, 3), np.uint8))
        p = _save(tmp_path / "in.png", _hazy_u8())
        assert _run(p, "-o", tmp_path / "out", "--save-transmission") == 0
    finally:
        os.umask(old)
    for f in (tmp_path / "x.png", tmp_path / "out" / "in.png", tmp_path / "out" / "in_t.png"):
        assert stat.S_IMODE(os.stat(f).st_mode) == 0o666 & ~umask, (f, oct(os.stat(f).st_mode))
    assert os.umask(old) == old                       # the umask is left as it was


def test_tiny_tile_rejected(tmp_path, capsys):
    p = _save(tmp_path / "a.png", _hazy_u8(H=45, W=52))
    out = tmp_path / "out"
    # defaults: halo 15//2 + 2*60 + 1 = 128, minimum tile 256
    for tile in ("1", "7", "255"):
        line = _usage_error(capsys, ["dehaze", str(p), "-o", str(out), "--quiet", "--tile", tile])
        assert line.startswith("fastdehaze: --tile: ") and ">= 256" in line and tile in line
    # with patch 5, radius 4 (FAST) the halo is 11: 21 is refused, 22 accepted
    line = _usage_error(capsys, ["dehaze", str(p), "-o", str(out), *FAST, "--tile", "21"])
    assert ">= 22" in line
    assert not out.exists()
    assert _run(p, "-o", out, "--tile", "22") == 0
    r = subprocess.run([sys.executable, "-m", "fastdehaze", "dehaze", "--help"], capture_output=True, text=True)
    assert ">= 256" in " ".join(r.stdout.split())


def test_warns_once_when_outdir_is_an_input_folder(tmp_path, capsys):
    src = tmp_path / "in"
    src.mkdir()
    _save(src / "cones.png", _hazy_u8(seed=1))
    _save(src / "tree.png", _hazy_u8(seed=2))
    # first run into the input folder itself: warned once, outputs never read by this run
    assert _run(src, "-o", src) == 0
    err = capsys.readouterr().err
    assert err.count("warning") == 1 and "also an input folder" in err and str(src) in err
    assert sorted(os.listdir(src)) == ["cones.png", "cones_1.png", "tree.png", "tree_1.png"]
    # a rerun reprocesses the earlier outputs (documented rules kept), again with one warning
    assert _run(src, "-o", src) == 0
    err = capsys.readouterr().err
    assert err.count("warning") == 1
    assert "cones_1_1.png" in os.listdir(src) and "cones_2.png" in os.listdir(src)
    # explicit files and glob patterns from that folder, and OUTDIR inside a '**' root
    assert _run(src / "tree.png", str(src / "cones.p*g"), "-o", src, "--overwrite") == 0
    assert capsys.readouterr().err.count("warning") == 1
    assert cli.outdir_is_input_folder([str(tmp_path) + "/**/*.png"], [], str(src))
    assert not cli.outdir_is_input_folder([str(src) + "/*.png"], [], str(tmp_path / "elsewhere"))
    # no warning when OUTDIR is another folder
    assert _run(src / "tree.png", "-o", tmp_path / "out") == 0
    assert "warning" not in capsys.readouterr().err


def test_info_and_python_m(capsys):
    assert cli.main(["info"]) == 0
    assert "torch" in capsys.readouterr().out
    r = subprocess.run([sys.executable, "-m", "fastdehaze", "dehaze", "--help"], capture_output=True, text=True)
    assert r.returncode == 0 and "as stored" in r.stdout and "a_1.png" in r.stdout


def test_demo_quick(tmp_path, capsys):
    pytest.importorskip("skimage")
    backends = "reference" if BACKEND == "reference" else None
    args = ["demo", "--quick", "-o", str(tmp_path), "--patch", "5", "--radius", "8"]
    rc = cli.main(args + (["--backends", backends] if backends else []))
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "hazy input" in out and "PSNR" in out and "SSIM" in out and " ms " in out
    # hazy | DCP | model | clear: the default shipped model runs on the same input (its numbers are
    # not checked: the shipped file may be retrained)
    from fastdehaze.nn.files import list_models
    shipped = list_models()
    panels = 4 if shipped else 3
    with Image.open(tmp_path / "demo_astronaut.png") as im:
        assert im.size == (96 * panels, 96)
    if shipped:
        name = cli.DEMO_DEFAULT_MODEL if cli.DEMO_DEFAULT_MODEL in shipped else shipped[0]
        line = next(ln for ln in out.splitlines() if ln.strip().startswith(f"model {name} "))
        assert " dB " in line and "SSIM" in line and " ms " in line, line
        assert f"| model {name} | clear)" in out.splitlines()[-1], out
    # the DCP helps on this synthetic haze
    lines = [ln for ln in out.splitlines() if " dB " in ln and not ln.strip().startswith("model ")]
    psnr = [float(ln.split("PSNR")[1].split("dB")[0]) for ln in lines]
    assert len(psnr) >= 2 and all(p > psnr[0] + 1 for p in psnr[1:])


def test_demo_model_none_path_and_unknown(tmp_path, capsys):
    """demo --model none: three panels; --model PATH: that file's panel; an unknown --model: one
    line naming --model, exit 2, before anything is written."""
    pytest.importorskip("skimage")
    from fastdehaze.nn import UNet, save_model
    fast = ["demo", "--quick", "--patch", "5", "--radius", "8", "--backends", "reference"]
    assert cli.main(fast + ["-o", str(tmp_path / "a"), "--model", "none"]) == 0
    out = capsys.readouterr().out
    with Image.open(tmp_path / "a" / "demo_astronaut.png") as im:
        assert im.size == (96 * 3, 96)
    assert "model " not in out.replace("(per image", "") and "(hazy | DCP backend reference | clear)" in out, out
    torch.manual_seed(0)
    mf = tmp_path / "tiny_unet.safetensors"
    save_model(UNet(width=4, levels=1, blocks=1).eval(), mf)
    assert cli.main(fast + ["-o", str(tmp_path / "b"), "--model", str(mf)]) == 0
    out = capsys.readouterr().out
    with Image.open(tmp_path / "b" / "demo_astronaut.png") as im:
        assert im.size == (96 * 4, 96)
    assert "  model tiny_unet " in out and "| model tiny_unet | clear)" in out, out
    with pytest.raises(SystemExit) as e:
        cli.main(fast + ["-o", str(tmp_path / "c"), "--model", "no-such-model"])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and err.startswith("fastdehaze: --model: ") and "no-such-model" in err, err
    assert not (tmp_path / "c").exists()


def test_dcp_beats_hazy_on_sots_indoor(data_dir):
    from skimage.metrics import peak_signal_noise_ratio
    hazy_dir = data_dir / "pairs" / "sots_indoor" / "hazy"
    names = sorted(os.listdir(hazy_dir))[:6]
    model_backend = BACKEND
    gains = []
    for n in names:
        I = fio.read_image(hazy_dir / n).pixels
        gt = fio.read_image(data_dir / "pairs" / "sots_indoor" / "gt" / n).pixels.astype(np.float64) / 255
        J, _ = cli.dehaze_image(fio.read_image(hazy_dir / n), backend=model_backend)
        gains.append(peak_signal_noise_ratio(gt, J.astype(np.float64) / 255, data_range=1)
                     - peak_signal_noise_ratio(gt, I.astype(np.float64) / 255, data_range=1))
    assert np.mean(gains) > 3.0, gains


# ---- command-line defects found trying the package as a new user (issue 9 item 8) ---------------

_INTERRUPT_SCRIPT = r"""
import os, sys, time
from fastdehaze import cli, io as fio
real = fio.write_png
def slow_write(f, *a, **k):
    real(f, *a, **k)
    f.flush()
    open(os.environ["MARKER"], "w").close()   # the temporary file exists now
    time.sleep(60)
fio.write_png = slow_write
sys.exit(cli.main(sys.argv[1:]))
"""


@pytest.mark.parametrize("sig, code", [("SIGTERM", 143), ("SIGINT", 130)])
def test_interrupt_cleans_temp_and_prints_summary(tmp_path, sig, code):
    import signal
    import time
    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    for i in range(3):
        _save(src / f"p{i}.png", _hazy_u8(seed=i))
    marker = tmp_path / "marker"
    env = dict(os.environ, MARKER=str(marker))
    proc = subprocess.Popen([sys.executable, "-c", _INTERRUPT_SCRIPT, "dehaze", str(src), "-o", str(out), *FAST],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        deadline = time.time() + 120
        while not marker.exists():
            assert proc.poll() is None and time.time() < deadline, proc.communicate()
            time.sleep(0.05)
        assert [n for n in os.listdir(out) if n.endswith(".tmp")]          # mid-write: a temporary file exists
        proc.send_signal(getattr(signal, sig))
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == code, err
    assert "Traceback" not in err and "interrupted by" in err and "0 of 3 image(s) written" in err, err
    assert os.listdir(out) == []                                            # no hidden temporary file left


def test_unwritable_existing_output_folder_found_up_front(tmp_path, capsys):
    # /sys/kernel exists and is a folder, and nobody (not even root) can create files in it
    if not os.path.isdir("/sys/kernel"):
        pytest.skip("no /sys/kernel")
    import tempfile
    try:
        tempfile.mkstemp(dir="/sys/kernel")
        pytest.skip("/sys/kernel is writable here")
    except OSError:
        pass
    p = _save(tmp_path / "a.png", _hazy_u8())
    line = _usage_error(capsys, ["dehaze", str(p), str(tmp_path / "missing.png"), "-o", "/sys/kernel", *FAST])
    assert line.startswith("fastdehaze: -o/--output: cannot write to the output folder '/sys/kernel'"), line


def test_backend_that_cannot_run_is_a_usage_error(tmp_path, capsys):
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    p = _save(tmp_path / "a.png", _hazy_u8())
    line = _usage_error(capsys, ["dehaze", str(p), "-o", str(tmp_path / "o"), "--backend", "cuda", "--quiet"])
    assert line.startswith("fastdehaze: --backend: 'cuda' cannot run here") and "device is cpu" in line
    assert not (tmp_path / "o").exists()


def test_large_patch_grows_the_default_tile(tmp_path, capsys):
    p = _save(tmp_path / "a.png", _hazy_u8())
    # --patch 10001 alone is fine (the default tile grows to twice its halo) ...
    assert cli.main(["dehaze", str(p), "-o", str(tmp_path / "o"), "-q", "--patch", "10001", "--radius", "4"]) == 0
    # ... an explicit tile that is too small for it names the halo's parts
    line = _usage_error(capsys, ["dehaze", str(p), "-o", str(tmp_path / "o2"), "-q", "--patch", "10001",
                                 "--tile", "300"])
    assert line.startswith("fastdehaze: --tile: ") and "patch//2 + 2*radius + 1 = 5121" in line


def test_error_lines_name_the_path_once_and_short_quiet(tmp_path, capsys):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    assert cli.main(["dehaze", str(bad), "-o", str(tmp_path / "o"), "-q", "--patch", "5", "--radius", "4"]) == 1
    err = capsys.readouterr().err
    line = next(ln for ln in err.splitlines() if "bad.png" in ln)
    assert line.startswith(f"fastdehaze: skipped {bad}: ") and line.count(str(bad)) == 1, line
    assert "it/s" not in err and "img/s" not in err                           # -q: no progress bar


def test_demo_backend_and_image_allow_list(tmp_path, capsys):
    pytest.importorskip("skimage")
    rc = cli.main(["demo", "--quick", "-o", str(tmp_path), "--patch", "5", "--radius", "8", "--backend", "reference"])
    out = capsys.readouterr().out
    assert rc == 0 and "DCP reference" in out and "DCP cpu" not in out, out
    for name in ("download_all", "data_dir", "lbp_frontal_face_cascade_filename", "cells3d"):
        with pytest.raises(SystemExit) as e:
            cli.main(["demo", "--quick", "-o", str(tmp_path), "--image", name])
        assert e.value.code == 2
        assert "invalid choice" in capsys.readouterr().err
    for name in cli.DEMO_IMAGES:                     # each allowed photo is bundled: loads without a download
        a = cli._load_sample(name)
        assert a.ndim == 3 and a.shape[2] == 3 and a.dtype == np.uint8, name


@pytest.mark.parametrize("opt,value", [("--size", "3"), ("--size", "0"), ("--size", "-5"), ("--beta", "-1"),
                                       ("--beta", "0"), ("--beta", "nan"), ("--A", "0"), ("--A", "1.5"),
                                       ("--A", "-0.2"), ("--A", "inf"), ("--repeat", "0")])
def test_demo_bad_numeric_flags_are_usage_errors(tmp_path, capsys, opt, value):
    """demo --size 3 / --beta -1 / ... : one line naming the flag, exit 2, nothing written (was a
    ValueError traceback from SSIM or the haze op)."""
    pytest.importorskip("skimage")
    with pytest.raises(SystemExit) as e:
        cli.main(["demo", "--quick", "-o", str(tmp_path / "o"), "--patch", "5", "--radius", "8", opt, value])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and err.startswith(f"fastdehaze: {opt}: "), err
    assert not (tmp_path / "o").exists()


def test_demo_smallest_size_runs_on_the_widest_photo(tmp_path, capsys):
    """The documented minimum --size works, also for 'text' (448x172, the widest photo)."""
    pytest.importorskip("skimage")
    rc = cli.main(["demo", "--quick", "-o", str(tmp_path), "--patch", "5", "--radius", "8", "--image", "text",
                   "--size", str(cli.DEMO_MIN_SIZE), "--backends", "reference"])
    assert rc == 0, capsys.readouterr()
    assert str(cli.DEMO_MIN_SIZE) in cli.build_parser()._subparsers._group_actions[0].choices["demo"].format_help()


def test_demo_reports_a_backend_that_fails_to_compile(tmp_path, capsys, monkeypatch):
    """gpu-readiness P0 #1: Triton's CompilationError is not a RuntimeError; the demo reports the
    backend as failed and goes on with the others."""
    pytest.importorskip("skimage")
    from fastdehaze.nn import dehazers

    class CompilationError(Exception):
        pass

    real = dehazers.DarkChannelDehazer.forward

    def forward(self, I, return_all=False):
        if self.backend == "cpu":
            raise CompilationError("at 12:8: NameError: Cannot access global variable A_MIN")
        return real(self, I, return_all)

    monkeypatch.setattr(dehazers.DarkChannelDehazer, "forward", forward)
    rc = cli.main(["demo", "--quick", "-o", str(tmp_path), "--patch", "5", "--radius", "8",
                   "--backends", "cpu,reference"])
    out = capsys.readouterr().out
    assert rc == 1 and "DCP cpu      failed: CompilationError" in out and "DCP reference PSNR" in out.replace("  ", " ")
    assert (tmp_path / "demo_astronaut.png").exists()


# ---- bug-case rows 39 (16-bit PNG) and 40 (EXIF orientation), as the rows describe them ---------

def test_bug_row_39_16bit_png_variants(tmp_path):
    cv2 = pytest.importorskip("cv2")
    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    rgb = np.linspace(0, 65535, 32 * 32 * 3).reshape(32, 32, 3).astype(np.uint16)
    cv2.imwrite(str(src / "g16.png"), rgb)                      # as the row writes it (BGR order on disk)
    grey = rgb[:, :, :1]
    fio.write_png(src / "grey16.png", grey)
    alpha = (np.arange(32 * 32).reshape(32, 32) * 64).astype(np.uint16)
    fio.write_png(src / "rgba16.png", rgb, alpha)
    assert _run(src, "-o", out) == 0
    for name, px in (("g16.png", rgb[:, :, ::-1]), ("grey16.png", grey), ("rgba16.png", rgb)):
        got = _read(out / name)
        assert got.bits == 16 and got.pixels.shape == px.shape, name
        # the loader gives [0, 1] values (divided by 65535, not 255) within 1/255 of the 8-bit picture
        loaded = _read(src / name).pixels / 65535
        assert loaded.max() <= 1 and np.abs(loaded - np.round(px / 257) / 255).max() <= 1 / 255, name
        # the output is the DCP of the 16-bit values (not of 8-bit ones scaled up), not whited out
        x = torch.from_numpy(np.ascontiguousarray(np.repeat(px, 3, 2) if px.shape[2] == 1 else px)).permute(2, 0, 1)[None].double() / 65535
        want = ops.dehaze_dcp(x, **KW, backend="reference")[0, :got.pixels.shape[2]].permute(1, 2, 0).numpy()
        assert np.abs(got.pixels / 65535 - want).max() <= 3 / 65535, name
        assert (got.pixels < 65535).mean() > 0.5, name
    np.testing.assert_array_equal(_read(out / "rgba16.png").alpha, alpha)


@pytest.mark.parametrize("orientation", [3, 6, 8])
def test_bug_row_40_orientations_file_and_folder(tmp_path, orientation):
    yy, xx = np.mgrid[0:20, 0:40]                        # 40 wide x 20 high as stored, smooth (JPEG-friendly)
    a = np.stack([xx * 6, yy * 12, 255 - xx * 3 - yy * 4], 2).clip(0, 255).astype(np.uint8)
    src = tmp_path / "in"
    src.mkdir()
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.fromarray(a).save(src / "o.jpg", exif=exif, quality=100)
    a16 = a.astype(np.uint16) * 257
    fio.write_png(src / "o16.png", a16)
    data = (src / "o16.png").read_bytes()                   # add an eXIf orientation chunk to the 16-bit PNG
    import struct
    import zlib
    ex = Image.Exif()
    ex[0x0112] = orientation
    payload = ex.tobytes()
    payload = payload[6:] if payload.startswith(b"Exif\0\0") else payload     # PNG eXIf: the TIFF data only
    chunk = struct.pack(">I", len(payload)) + b"eXIf" + payload + struct.pack(">I", zlib.crc32(b"eXIf" + payload))
    (src / "o16.png").write_bytes(data[:33] + chunk + data[33:])     # after IHDR
    upright_shape = (20, 40) if orientation == 3 else (40, 20)
    assert fio.read_image(src / "o16.png").pixels.shape[:2] == upright_shape
    for inputs, out in (([src / "o.jpg", src / "o16.png"], tmp_path / "f"), ([src], tmp_path / "d")):
        assert _run(*inputs, "-o", out) == 0
        for name in ("o.png", "o16.png"):
            got = _read(out / name)
            assert got.pixels.shape[:2] == upright_shape, (name, got.pixels.shape)
            with Image.open(out / name) as im:
                assert im.getexif().get(0x0112) is None            # never both rotated and tagged
        # the same picture whichever loader path (8-bit Pillow, 16-bit OpenCV) was taken
        p8 = _read(out / "o.png").pixels.astype(int)
        p16 = _read(out / "o16.png").pixels.astype(np.float64) / 257
        assert np.abs(p8 - p16).max() <= 32              # JPEG (4:2:0 chroma) vs lossless, DCP-amplified
        flipped = np.abs(p8 - p16[::-1, ::-1]).max()
        assert flipped > 100                             # the check would see a wrong turn
