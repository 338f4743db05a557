"""Image files in and out, for the ``fastdehaze`` command (8- and 16-bit PNG, JPEG, TIFF, ...).

What the file boundary does, and why:

* **Values are taken as stored** (sRGB-encoded code values scaled to [0, 1]), with no
  linearisation and no colour management: the dark channel prior is defined on the stored
  values in He et al.'s paper and in all public DCP code. An embedded ICC profile is ignored
  for the computation and copied to an 8-bit output.
* **EXIF orientation** is honoured: pixels are turned as :func:`PIL.ImageOps.exif_transpose`
  turns them, and the output is written upright without an orientation tag.
* **Bit depth**: 8-bit files give 8-bit outputs, 16-bit files (PNG, TIFF) give 16-bit PNG
  outputs. Pillow decodes 16-bit *grey* PNG but silently truncates 16-bit colour PNG to 8 bits,
  so a 16-bit colour (or grey + alpha) PNG is decoded with OpenCV (``opencv-python-headless``)
  and a TIFF with ``tifffile`` when they are installed; without them such a file is an error
  (never a silent truncation). 16-bit PNGs are written by a small built-in encoder (zlib).
* **Grey images** are read as one channel; :func:`as_rgb` replicates it to 3 channels for the
  prior, and the output, whose three channels are then equal, is written back as grey.
* **Alpha** (RGBA, grey + alpha, palette with transparency) is kept aside, never seen by the
  prior, and re-attached unchanged to the output.
* **Large images**: Pillow's decompression-bomb guard (a warning above ``MAX_IMAGE_PIXELS``,
  89.5 MP, an exception above twice that) is replaced by one check: an image with more than
  ``max_pixels`` pixels (default twice ``PIL.Image.MAX_IMAGE_PIXELS``, 179 MP) is an
  :class:`ImageReadError` naming the size and the limit, raised before any pixel is decoded;
  below it no warning is printed. ``max_pixels=0`` (``--max-pixels 0``) removes the limit.
* **Float to integer** (:func:`quantize`): ``round(x * max)`` clamped to [0, max] *before* the
  cast, so out-of-range values saturate (a value of -8.1 in [0, 1] units gives 0, never a
  wrapped 255-ish value); NaN is written as 0.
"""
from __future__ import annotations

import dataclasses
import os
import struct
import zlib
from typing import Optional

import numpy as np
import torch

__all__ = ["LoadedImage", "ImageReadError", "read_image", "default_max_pixels", "write_png", "quantize", "to_tensor", "as_rgb",
           "IMAGE_EXTENSIONS"]

#: extensions picked up when a folder is given to the command line
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".webp", ".ppm", ".pgm")

_EXIF_ORIENTATION = 0x0112


class ImageReadError(ValueError):
    """A file that cannot be read as an image (missing, corrupt, unsupported)."""


@dataclasses.dataclass
class LoadedImage:
    """An image as read from a file, upright.

    pixels: [H, W, C] uint8 or uint16 array, C = 1 (grey) or 3 (RGB), values as stored.
    alpha: [H, W] array of the same dtype, or None.
    bits: 8 or 16 (the bit depth that the output is written with).
    icc_profile: the embedded ICC profile (bytes) or None; not applied.
    """
    pixels: np.ndarray
    alpha: Optional[np.ndarray]
    bits: int
    icc_profile: Optional[bytes] = None

    @property
    def max_value(self) -> int:
        return 255 if self.bits == 8 else 65535

    @property
    def is_gray(self) -> bool:
        return self.pixels.shape[2] == 1


# ---- reading ------------------------------------------------------------------------------------

def _orient(a: np.ndarray, orientation: int) -> np.ndarray:
    """Apply an EXIF orientation to an [H, W, ...] array exactly as PIL.ImageOps.exif_transpose does."""
    if orientation == 2:    # FLIP_LEFT_RIGHT
        a = a[:, ::-1]
    elif orientation == 3:  # ROTATE_180
        a = a[::-1, ::-1]
    elif orientation == 4:  # FLIP_TOP_BOTTOM
        a = a[::-1]
    elif orientation == 5:  # TRANSPOSE
        a = a.swapaxes(0, 1)
    elif orientation == 6:  # ROTATE_270 (clockwise quarter turn)
        a = np.rot90(a, k=-1)
    elif orientation == 7:  # TRANSVERSE
        a = a[::-1, ::-1].swapaxes(0, 1)
    elif orientation == 8:  # ROTATE_90 (counter-clockwise quarter turn)
        a = np.rot90(a, k=1)
    return np.ascontiguousarray(a)


def _png_header(path: str):
    """(bit depth, colour type) of a PNG file, from its IHDR chunk."""
    with open(path, "rb") as f:
        head = f.read(26)
    if len(head) < 26 or head[:8] != b"\x89PNG\r\n\x1a\n" or head[12:16] != b"IHDR":
        raise ImageReadError(f"{path}: not a valid PNG header")
    return head[24], head[25]


def _read_png16_color(path: str, ctype: int):
    """16-bit colour / grey+alpha PNG through OpenCV (Pillow would truncate it to 8 bits)."""
    try:
        import cv2
    except ImportError:
        raise ImageReadError(f"{path}: a 16-bit colour PNG needs OpenCV to be read without losing bits "
                             "(pip install opencv-python-headless)") from None
    buf = np.fromfile(path, dtype=np.uint8)
    a = cv2.imdecode(buf, cv2.IMREAD_UNCHANGED)
    if a is None:
        raise ImageReadError(f"{path}: OpenCV could not decode this PNG")
    if a.ndim == 2:
        a = a[:, :, None]
    if a.shape[2] == 3:
        a = a[:, :, ::-1]           # BGR -> RGB
    elif a.shape[2] == 4:
        # BGRA -> RGBA; a grey + alpha PNG (colour type 4) comes back as BGRA with B = G = R
        a = a[:, :, [0, 3]] if ctype == 4 else a[:, :, [2, 1, 0, 3]]
    return np.ascontiguousarray(a)


def _read_tiff(path: str):
    import tifffile
    a = tifffile.imread(path)
    if a.ndim == 3 and a.shape[0] in (1, 2, 3, 4) and a.shape[2] not in (1, 2, 3, 4):
        a = np.moveaxis(a, 0, -1)   # planar (separate) configuration
    if a.ndim == 2:
        a = a[:, :, None]
    if a.ndim != 3:
        raise ImageReadError(f"{path}: TIFF with shape {a.shape} (one 2-D page of 1 to 4 channels is supported)")
    return a


def _split(a: np.ndarray, path: str):
    """[H,W,1|2|3|4] integer array -> (pixels [H,W,1|3], alpha or None, bits)."""
    if a.dtype == np.uint8:
        bits = 8
    elif a.dtype == np.uint16:
        bits = 16
    elif a.dtype == np.bool_:
        a, bits = a.astype(np.uint8) * 255, 8
    else:
        raise ImageReadError(f"{path}: unsupported sample type {a.dtype} (8- and 16-bit integer images are supported)")
    c = a.shape[2]
    if c == 1:
        return a, None, bits
    if c == 2:
        return a[:, :, :1], a[:, :, 1], bits
    if c == 3:
        return a, None, bits
    if c == 4:
        return a[:, :, :3], a[:, :, 3], bits
    raise ImageReadError(f"{path}: {c} channels (1 to 4 are supported)")


def default_max_pixels() -> int:
    """The default pixel limit of :func:`read_image`: twice ``PIL.Image.MAX_IMAGE_PIXELS`` (where Pillow
    raises DecompressionBombError), 0 (none) when Pillow's limit is off (None)."""
    from PIL import Image
    m = Image.MAX_IMAGE_PIXELS
    return 0 if m is None else 2 * int(m)


_PIL_LOCK = __import__("threading").Lock()


def read_image(path, max_pixels: Optional[int] = None) -> LoadedImage:
    """Read an image file, upright (EXIF orientation applied), keeping its bit depth.

    Args:
        path: a file in any format Pillow reads (PNG, JPEG, TIFF, BMP, WebP, ...).
        max_pixels: refuse images with more pixels (width x height) than this, before decoding
            them (None: :func:`default_max_pixels`, 0: no limit).

    Returns:
        :class:`LoadedImage` with uint8 (8-bit files) or uint16 (16-bit PNG/TIFF) pixels,
        [H, W, 1] for grey or [H, W, 3] for colour, and the alpha channel apart.

    Raises:
        ImageReadError (a ValueError): missing, unreadable, corrupt or unsupported file, or
            more than ``max_pixels`` pixels.
    """
    from PIL import Image

    path = os.fspath(path)
    limit = default_max_pixels() if max_pixels is None else int(max_pixels)
    if limit < 0:
        raise ValueError(f"max_pixels must be >= 0 (0: no limit), got {max_pixels}")
    import warnings
    with _PIL_LOCK, warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        saved, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None   # our own check below replaces Pillow's
        try:
            return _read_image(path, limit)
        finally:
            Image.MAX_IMAGE_PIXELS = saved


def _read_image(path: str, limit: int) -> LoadedImage:
    from PIL import Image, ImageOps, UnidentifiedImageError
    try:
        with Image.open(path) as im:
            w, h = im.size
            if limit and w * h > limit:
                raise ImageReadError(f"{path}: {w}x{h} = {w * h:,} pixels is above the limit of {limit:,} pixels "
                                     "(a decompression-bomb guard; allow it with --max-pixels N, or 0 for no limit; "
                                     "large photos are processed in tiles)")
            fmt = im.format
            orientation = int(im.getexif().get(_EXIF_ORIENTATION, 1) or 1)
            icc = im.info.get("icc_profile")
            a = None
            if fmt == "PNG":
                depth, ctype = _png_header(path)
                if depth == 16 and ctype in (2, 4, 6):
                    a = _read_png16_color(path, ctype)
            elif fmt == "TIFF":
                try:
                    a = _read_tiff(path)
                except ImportError:
                    bps = im.tag_v2.get(258, (8,))
                    bps = bps if isinstance(bps, tuple) else (bps,)
                    if max(bps) > 8 and len(im.getbands()) > 1:
                        raise ImageReadError(f"{path}: a 16-bit colour TIFF needs tifffile to be read without "
                                             "losing bits (pip install tifffile)") from None
            if a is not None:
                a = _orient(a, orientation)
            else:
                im.load()
                im = ImageOps.exif_transpose(im)
                a = _pil_to_array(im, path)
    except ImageReadError:
        raise
    except FileNotFoundError:
        raise ImageReadError(f"{path}: no such file") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError, struct.error) as e:
        raise ImageReadError(f"{path}: cannot read image ({type(e).__name__}: {e})") from None
    pixels, alpha, bits = _split(a, path)
    if pixels.shape[0] == 0 or pixels.shape[1] == 0:
        raise ImageReadError(f"{path}: empty image {pixels.shape[1]}x{pixels.shape[0]}")
    pixels = np.require(pixels, requirements=["C", "W"])  # writable: torch.from_numpy shares it
    alpha = None if alpha is None else np.require(alpha, requirements=["C", "W"])
    return LoadedImage(pixels, alpha, bits, icc)


def _pil_to_array(im, path: str) -> np.ndarray:
    mode = im.mode
    if mode == "P" or mode == "PA":
        mode = "RGBA" if ("transparency" in im.info or mode == "PA") else "RGB"
        im = im.convert(mode)
    elif mode == "1":
        im, mode = im.convert("L"), "L"
    elif mode in ("CMYK", "YCbCr", "LAB", "HSV"):
        im, mode = im.convert("RGB"), "RGB"
    elif mode == "La":
        im, mode = im.convert("LA"), "LA"
    elif mode == "RGBa":
        im, mode = im.convert("RGBA"), "RGBA"
    if mode in ("L", "LA", "RGB", "RGBA"):
        a = np.asarray(im)
    elif mode.startswith("I;16"):
        a = np.asarray(im).astype(np.uint16)
    elif mode == "I":                      # 16-bit grey decoded as 32-bit ints by some plugins
        a = np.asarray(im)
        if a.min(initial=0) < 0 or a.max(initial=0) > 65535:
            raise ImageReadError(f"{path}: 32-bit integer image (8- and 16-bit images are supported)")
        a = a.astype(np.uint16)
    else:
        raise ImageReadError(f"{path}: unsupported image mode {im.mode!r}")
    if a.ndim == 2:
        a = a[:, :, None]
    return a


# ---- tensors ------------------------------------------------------------------------------------

def to_tensor(a: np.ndarray) -> torch.Tensor:
    """[H, W, C] integer array -> [1, C, H, W] tensor of the same integer dtype (no copy of the values
    beyond what torch.from_numpy needs; a view where possible)."""
    return torch.from_numpy(np.ascontiguousarray(a)).permute(2, 0, 1).unsqueeze(0)


def as_rgb(x: torch.Tensor) -> torch.Tensor:
    """[B, 1, H, W] -> [B, 3, H, W] by replication (an expanded view); 3 channels pass through."""
    return x.expand(x.shape[0], 3, *x.shape[2:]) if x.shape[1] == 1 else x


def quantize(x, bits: int = 8):
    """Float values in [0, 1] -> uint8 (bits=8) or uint16 (bits=16): ``round(x * max)`` clamped to
    [0, max] before the cast (so values outside [0, 1] saturate, never wrap); NaN -> 0.

    Accepts a torch tensor (returns a tensor) or a numpy array (returns an array).
    """
    if bits not in (8, 16):
        raise ValueError(f"bits must be 8 or 16, got {bits!r}")
    maxv = 255 if bits == 8 else 65535
    if isinstance(x, np.ndarray):
        return quantize(torch.from_numpy(x), bits).numpy()
    if not x.is_floating_point():
        raise TypeError(f"x must be a floating-point tensor, got {x.dtype}")
    y = torch.nan_to_num(x.to(torch.float32 if x.dtype != torch.float64 else torch.float64), nan=0.0)
    y = torch.round(y * maxv).clamp_(0, maxv)
    return y.to(torch.uint8) if bits == 8 else y.to(torch.int32).to(torch.uint16)


# ---- writing ------------------------------------------------------------------------------------

def _png16_bytes(a: np.ndarray) -> bytes:
    """Encode a [H, W, C] uint16 array (C = 1, 2, 3, 4) as a 16-bit PNG (rows with the Up filter)."""
    h, w, c = a.shape
    ctype = {1: 0, 2: 4, 3: 2, 4: 6}[c]
    rows = np.ascontiguousarray(a.astype(">u2")).view(np.uint8).reshape(h, w * c * 2)
    filt = rows.copy()
    filt[1:] = rows[1:] - rows[:-1]          # PNG filter 2 (Up), modulo 256
    ftype = np.full((h, 1), 2, np.uint8)
    ftype[0] = 0
    raw = np.concatenate([ftype, filt], axis=1).tobytes()

    def chunk(tag, data):
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 16, ctype, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(raw, 6)) + chunk(b"IEND", b""))


def write_png(f, pixels: np.ndarray, alpha: Optional[np.ndarray] = None, icc_profile: Optional[bytes] = None) -> None:
    """Write [H, W, 1|3] uint8 or uint16 pixels (and an optional [H, W] alpha of the same dtype) as
    PNG to ``f`` (a path or a binary file object). uint16 gives a 16-bit PNG."""
    if pixels.ndim == 2:
        pixels = pixels[:, :, None]
    if pixels.dtype not in (np.uint8, np.uint16) or pixels.shape[2] not in (1, 3):
        raise ValueError(f"pixels must be [H,W,1|3] uint8/uint16, got {pixels.shape} {pixels.dtype}")
    a = pixels if alpha is None else np.concatenate([pixels, alpha.astype(pixels.dtype)[:, :, None]], axis=2)
    if a.dtype == np.uint16:
        data = _png16_bytes(a)
        if isinstance(f, (str, os.PathLike)):
            with open(f, "wb") as fh:
                fh.write(data)
        else:
            f.write(data)
        return
    from PIL import Image
    im = Image.fromarray(np.ascontiguousarray(a[:, :, 0] if a.shape[2] == 1 else a))  # L, LA, RGB, RGBA
    kw = {"icc_profile": icc_profile} if icc_profile else {}
    im.save(f, format="PNG", **kw)

