"""fastdehaze.io: bit depths, EXIF orientation, alpha, grey, corrupt files, saturation at the boundary."""
import numpy as np
import pytest
import torch
from PIL import Image, ImageOps

from fastdehaze import io as fio


def _rand(shape, dtype, seed=0):
    rng = np.random.default_rng(seed)
    hi = 256 if dtype == np.uint8 else 65536
    return rng.integers(0, hi, size=shape, dtype=np.int64).astype(dtype)


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
@pytest.mark.parametrize("channels", [1, 2, 3, 4])
def test_png_roundtrip_bits_alpha(tmp_path, dtype, channels):
    a = _rand((5, 7, channels), dtype)
    px = a[:, :, :1] if channels in (1, 2) else a[:, :, :3]
    alpha = a[:, :, -1] if channels in (2, 4) else None
    p = tmp_path / "x.png"
    fio.write_png(p, px, alpha)
    r = fio.read_image(p)
    assert r.bits == (8 if dtype == np.uint8 else 16)
    assert r.pixels.dtype == dtype and r.pixels.shape == px.shape
    np.testing.assert_array_equal(r.pixels, px)
    if alpha is None:
        assert r.alpha is None
    else:
        np.testing.assert_array_equal(r.alpha, alpha)


def test_png16_written_is_read_by_pillow_and_opencv(tmp_path):
    a = _rand((6, 9, 3), np.uint16, 1)
    fio.write_png(tmp_path / "c.png", a)
    cv2 = pytest.importorskip("cv2")
    b = cv2.imread(str(tmp_path / "c.png"), cv2.IMREAD_UNCHANGED)[:, :, ::-1]
    np.testing.assert_array_equal(a, b)
    g = a[:, :, :1]
    fio.write_png(tmp_path / "g.png", g)
    with Image.open(tmp_path / "g.png") as im:
        np.testing.assert_array_equal(np.asarray(im).astype(np.uint16), g[:, :, 0])


def test_tiff16_rgb(tmp_path):
    tifffile = pytest.importorskip("tifffile")
    a = _rand((8, 5, 3), np.uint16, 2)
    tifffile.imwrite(tmp_path / "x.tif", a, photometric="rgb")
    r = fio.read_image(tmp_path / "x.tif")
    assert r.bits == 16
    np.testing.assert_array_equal(r.pixels, a)


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_matches_pillow(tmp_path, orientation):
    a = _rand((4, 6, 3), np.uint8, orientation)
    im = Image.fromarray(a)
    exif = Image.Exif()
    exif[0x0112] = orientation
    p = tmp_path / "o.png"
    im.save(p, exif=exif)
    want = np.asarray(ImageOps.exif_transpose(Image.open(p)))
    got = fio.read_image(p).pixels
    np.testing.assert_array_equal(got, want)
    if orientation in (5, 6, 7, 8):
        assert got.shape[:2] == (6, 4)


def test_exif_orientation_16bit_colour_path(tmp_path):
    # 16-bit colour PNG goes through OpenCV: the orientation must still be applied (our _orient).
    pytest.importorskip("cv2")
    a = _rand((4, 6, 3), np.uint16, 3)
    p = tmp_path / "o16.png"
    fio.write_png(p, a)
    b8 = (a >> 8).astype(np.uint8)
    for k in range(1, 9):
        want = np.asarray(ImageOps.exif_transpose(_with_orientation(Image.fromarray(b8), k)))
        np.testing.assert_array_equal((fio._orient(a, k) >> 8).astype(np.uint8), want)


def _with_orientation(im, k):
    im.getexif()[0x0112] = k
    im.info["exif"] = im.getexif().tobytes()
    return im


def test_grey_and_palette(tmp_path):
    g = _rand((5, 5), np.uint8)
    Image.fromarray(g).save(tmp_path / "g.png")
    r = fio.read_image(tmp_path / "g.png")
    assert r.is_gray and r.pixels.shape == (5, 5, 1) and r.bits == 8
    Image.fromarray(_rand((5, 5, 3), np.uint8)).convert("P").save(tmp_path / "p.png")
    r = fio.read_image(tmp_path / "p.png")
    assert r.pixels.shape == (5, 5, 3) and r.alpha is None


def test_jpeg(tmp_path):
    Image.fromarray(_rand((9, 11, 3), np.uint8)).save(tmp_path / "a.jpg", quality=95)
    r = fio.read_image(tmp_path / "a.jpg")
    assert r.pixels.shape == (9, 11, 3) and r.bits == 8 and r.pixels.flags.writeable


@pytest.mark.parametrize("content", [b"", b"not an image at all", b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00"])
def test_corrupt_files_raise(tmp_path, content):
    p = tmp_path / "bad.png"
    p.write_bytes(content)
    with pytest.raises(fio.ImageReadError, match="bad.png"):
        fio.read_image(p)


def test_truncated_png_raises(tmp_path):
    p = tmp_path / "t.png"
    Image.fromarray(_rand((40, 40, 3), np.uint8)).save(p)
    data = p.read_bytes()
    p.write_bytes(data[: len(data) // 2])
    with pytest.raises(fio.ImageReadError, match="t.png"):
        fio.read_image(p)


def test_missing_file_raises(tmp_path):
    with pytest.raises(fio.ImageReadError, match="no such file"):
        fio.read_image(tmp_path / "nope.png")


def test_quantize_saturates_not_wraps():
    # I = 10, A = 240, t = 0.1 in 8-bit units: J = (10 - 240) / 0.1 + 240 = -2060 -> 0, never wrapped.
    from fastdehaze.ops import recover
    I = torch.full((1, 3, 1, 1), 10 / 255)
    J = recover(I, torch.full((1, 1, 1, 1), 0.1), 240 / 255, backend="reference")
    assert bool((J < 0).all())
    assert fio.quantize(J, 8).flatten().tolist() == [0, 0, 0]
    assert fio.quantize(torch.tensor([-8.1, 1.7, 0.5, float("nan"), 1.0 / 255 * 0.49]), 8).tolist() == [0, 255, 128, 0, 0]
    assert fio.quantize(torch.tensor([-1.0, 2.0, 0.5]), 16).tolist() == [0, 65535, 32768]
    assert fio.quantize(torch.tensor([1.0]), 16).dtype == torch.uint16
    assert fio.quantize(np.array([0.25, 9.0]), 8).tolist() == [64, 255]


def test_quantize_bad_args():
    with pytest.raises(ValueError, match="bits"):
        fio.quantize(torch.zeros(1), 12)
    with pytest.raises(TypeError, match="x must be a floating"):
        fio.quantize(torch.zeros(1, dtype=torch.int32))


def test_write_png_bad_args(tmp_path):
    with pytest.raises(ValueError, match="pixels"):
        fio.write_png(tmp_path / "x.png", np.zeros((2, 2, 3), np.float32))


def test_max_pixels_replaces_pillows_bomb_guard(tmp_path, monkeypatch):
    """bug-case row 46: our one check (no raw DecompressionBombWarning / Error); the limit is named."""
    import warnings
    import PIL.Image
    a = _rand((40, 40, 3), np.uint8)
    b = _rand((50, 50, 3), np.uint8)
    fio.write_png(tmp_path / "a.png", a)
    fio.write_png(tmp_path / "b.png", b)
    monkeypatch.setattr(PIL.Image, "MAX_IMAGE_PIXELS", 1000)
    assert fio.default_max_pixels() == 2000
    with warnings.catch_warnings():
        warnings.simplefilter("error")              # 1600 px > 1000: Pillow would warn
        np.testing.assert_array_equal(fio.read_image(tmp_path / "a.png").pixels, a)
    with pytest.raises(fio.ImageReadError, match=r"b.png: 50x50 = 2,500 pixels is above the limit of 2,000"):
        fio.read_image(tmp_path / "b.png")
    np.testing.assert_array_equal(fio.read_image(tmp_path / "b.png", max_pixels=0).pixels, b)
    np.testing.assert_array_equal(fio.read_image(tmp_path / "b.png", max_pixels=2500).pixels, b)
    with pytest.raises(fio.ImageReadError, match="limit of 1,599"):
        fio.read_image(tmp_path / "a.png", max_pixels=1599)
    with pytest.raises(ValueError, match="max_pixels"):
        fio.read_image(tmp_path / "a.png", max_pixels=-1)
    assert PIL.Image.MAX_IMAGE_PIXELS == 1000        # restored after each read
    monkeypatch.setattr(PIL.Image, "MAX_IMAGE_PIXELS", None)
    assert fio.default_max_pixels() == 0
    # a 16-bit colour PNG (OpenCV path) is checked before decoding too
    pytest.importorskip("cv2")
    fio.write_png(tmp_path / "c16.png", _rand((50, 50, 3), np.uint16))
    with pytest.raises(fio.ImageReadError, match="above the limit"):
        fio.read_image(tmp_path / "c16.png", max_pixels=100)
