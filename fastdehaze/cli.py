"""The ``fastdehaze`` command (also ``python -m fastdehaze``).

    fastdehaze dehaze INPUT... -o OUTDIR [options]   dark-channel-prior dehazing of photos
    fastdehaze demo [-o OUTDIR]                       hazes a bundled photo, dehazes it, scores it
    fastdehaze info                                   which backends are built / loaded

Layers: this module uses ``fastdehaze.nn`` (DarkChannelDehazer, dehaze_tiled) and
``fastdehaze.io`` only.
"""
from __future__ import annotations

import argparse
import glob
import os
import sys
import tempfile
import time

DEHAZE_EPILOG = """\
Inputs: files, folders (their image files, not recursive: %(exts)s) and glob patterns
(quoted, e.g. 'photos/**/*.jpg'; ** recurses). Each file is read once even if named twice.

Outputs: OUTDIR/<stem>.png for every input (with --save-transmission also <stem>_t.png, the
refined transmission as a grey image). Name clashes are resolved in input order: the first
input with stem "a" gets a.png, the next a_1.png, then a_2.png, ...; a name that is one of this
run's input files is never used (an input is never overwritten). An output that already exists
is not replaced unless --overwrite is given (the file is reported and counted as failed).
Files are written atomically: a temporary file in OUTDIR, then a rename.

Values: pixels are taken as stored (sRGB code values scaled to [0, 1], no linearisation, no
colour management), as in He et al. and all public DCP code. EXIF orientation is applied.
8-bit inputs give 8-bit PNGs, 16-bit PNG/TIFF inputs give 16-bit PNGs; floats are rounded and
clamped to the integer range (saturated, never wrapped). Grey images are dehazed as three
equal channels and written back as grey. An alpha channel is kept aside (the prior never
sees it) and re-attached unchanged.

Large photos: images with a side longer than --tile are processed in tiles (A from a first
pass over the whole image, then tiles with halos of patch//2 + 2*radius + 1 pixels, 128 at the
defaults), which gives the untiled result to rounding in bounded memory. A positive --tile must
be at least twice the halo (256 at the defaults): a smaller tile is a usage error, because each
tile is computed with its halos and the work per image would grow as ((tile + 2 halo) / tile)^2
(at the minimum it is at most 4 times the untiled work).

Output folder: created if missing; when it cannot be created (it is a file, no permission, ...)
the command stops with a one-line message and status 2. When OUTDIR is also an input folder
(a folder INPUT, the folder of an input file, or inside the root of a '**' pattern) a warning is
printed once: images that an earlier run wrote there are inputs of this run and are dehazed
again under new names (a.png -> a_1.png); the files this run writes are never read by it.
New files get the usual mode for new files, 0666 minus the umask (0644 under umask 022).

Exit status: 0 when every input was dehazed and written, 1 when any input failed (unreadable,
corrupt, existing output, ...; the others are still processed), 2 for a usage error: a bad
option value (--patch, --omega, --top, --radius, --eps, --t0, --tile, --device, a CUDA device
that is not there) or an output folder that cannot be created; these are checked before any
file is read, and reported in one line "fastdehaze: <option>: <reason>".
"""


def _add_dcp_args(p):
    g = p.add_argument_group("dark channel prior parameters (defaults from He et al. / SPEC)")
    g.add_argument("--patch", type=int, default=15, help="dark-channel window, odd (default 15)")
    g.add_argument("--omega", type=float, default=0.95, help="fraction of haze removed, in [0, 1] (default 0.95)")
    g.add_argument("--top", type=float, default=0.001,
                   help="fraction of brightest dark-channel pixels averaged for A (default 0.001)")
    g.add_argument("--radius", type=int, default=60, help="guided-filter radius in pixels (default 60)")
    g.add_argument("--eps", type=float, default=1e-3, help="guided-filter regulariser (default 1e-3)")
    g.add_argument("--t0", type=float, default=0.1, help="lower bound of the transmission (default 0.1)")


def _add_run_args(p):
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (cuda when available; default)")
    p.add_argument("--backend", default="auto", choices=("auto", "reference", "cpu", "cuda", "triton"),
                   help="kernel backend (default auto: the fastest for the device)")


def build_parser() -> argparse.ArgumentParser:
    from .io import IMAGE_EXTENSIONS
    parser = argparse.ArgumentParser(prog="fastdehaze", description="Single-image dehazing with fused kernels.")
    sub = parser.add_subparsers(dest="command", metavar="{dehaze,demo,info}")
    sub.required = True

    d = sub.add_parser("dehaze", help="dehaze photos with the dark channel prior",
                       description="Dehaze photos with the dark channel prior (He et al., CVPR 2009) and a "
                                   "guided-filter-refined transmission (He et al., ECCV 2010).",
                       epilog=DEHAZE_EPILOG % {"exts": " ".join(IMAGE_EXTENSIONS)},
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    d.add_argument("inputs", nargs="+", metavar="INPUT", help="image files, folders or glob patterns")
    d.add_argument("-o", "--output", required=True, metavar="OUTDIR", help="output folder (created if missing)")
    d.add_argument("--overwrite", action="store_true", help="replace existing outputs (never an input)")
    d.add_argument("--save-transmission", action="store_true", help="also write <stem>_t.png (refined t)")
    d.add_argument("--tile", type=int, default=2048,
                   help="tile size in pixels for images with a longer side (default 2048; 0: never tile); "
                        "a positive tile must be >= 2 * (patch//2 + 2*radius + 1), i.e. >= 256 at the defaults")
    d.add_argument("--quiet", action="store_true", help="no progress bar")
    _add_run_args(d)
    _add_dcp_args(d)

    m = sub.add_parser("demo", help="haze a bundled photo, dehaze it with each backend, print PSNR/SSIM and times",
                       description="Hazes a photo bundled with scikit-image through the scattering model "
                                   "I = J t + A (1 - t), t = exp(-beta d), with a depth proxy d that grows "
                                   "linearly from 0 at the bottom row to 1 at the top row (the ground is near, "
                                   "the top of the frame far), dehazes it with every available backend, prints "
                                   "PSNR/SSIM (skimage.metrics) against the clean photo and the time of each, and "
                                   "writes hazy | dehazed | clean side by side as a PNG.")
    m.add_argument("-o", "--output", default="out", metavar="OUTDIR", help="output folder (default ./out)")
    m.add_argument("--image", default="astronaut", help="scikit-image sample: astronaut (default), chelsea, coffee, ...")
    m.add_argument("--A", type=float, default=0.9, help="atmospheric light of the synthetic haze (default 0.9)")
    m.add_argument("--beta", type=float, default=1.5, help="scattering coefficient for the depth proxy (default 1.5)")
    m.add_argument("--backends", default=None,
                   help="comma list of backends to run (default: every one available for the device)")
    m.add_argument("--size", type=int, default=None, help="resize the photo to this many pixels on its long side")
    m.add_argument("--repeat", type=int, default=3, help="timed runs per backend, the best is reported (default 3)")
    m.add_argument("--quick", action="store_true", help="a 96-pixel image and one run (for tests)")
    _add_run_args(m)
    _add_dcp_args(m)

    sub.add_parser("info", help="print which backends are built and loaded")
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "info":
        import fastdehaze
        print(fastdehaze.backend_report())
        return 0
    if args.backend == "triton" and _device_type(args.device) == "cpu":
        # The Triton kernels run on CPU tensors only under the interpreter (slow; for checking).
        os.environ.setdefault("TRITON_INTERPRET", "1")
    if args.command == "dehaze":
        return cmd_dehaze(args)
    return cmd_demo(args)


def _device_type(device: str) -> str:
    if device == "auto":
        import torch
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device.split(":")[0]


def _usage_error(msg: str):
    """A usage error: one line "fastdehaze: <msg>" on stderr and exit status 2 (as argparse)."""
    print(f"fastdehaze: {msg}", file=sys.stderr)
    raise SystemExit(2)


def _resolve_device(device: str):
    import torch
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError, TypeError):
        _usage_error(f"--device: not a device: {device!r} (cpu, cuda, cuda:N or auto)")
    if dev.type not in ("cpu", "cuda"):
        _usage_error(f"--device: {device!r} is not supported (cpu, cuda, cuda:N or auto)")
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            _usage_error(f"--device: {device!r}: no CUDA device is available")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            _usage_error(f"--device: {device!r}: only {torch.cuda.device_count()} CUDA device(s) are available")
    return dev


def _make_output_folder(outdir: str):
    """os.makedirs(outdir), a usage error (status 2, one line naming the folder) when it fails."""
    try:
        os.makedirs(outdir, exist_ok=True)
    except OSError as e:
        if os.path.exists(outdir) and not os.path.isdir(outdir):
            reason = "it exists and is not a folder"
        else:
            reason = e.strerror or str(e)
        _usage_error(f"-o/--output: cannot create the output folder {outdir!r}: {reason}")


# ---- dehaze -------------------------------------------------------------------------------------

def expand_inputs(specs):
    """INPUT arguments -> (list of file paths in order, without repeats; list of error messages)."""
    from .io import IMAGE_EXTENSIONS
    files, errors, seen = [], [], set()

    def add(p):
        key = os.path.realpath(p)
        if key not in seen:
            seen.add(key)
            files.append(p)

    for spec in specs:
        if os.path.isdir(spec):
            found = sorted(os.path.join(spec, n) for n in os.listdir(spec)
                           if n.lower().endswith(IMAGE_EXTENSIONS) and os.path.isfile(os.path.join(spec, n)))
            if not found:
                errors.append(f"{spec}: folder holds no image files ({' '.join(IMAGE_EXTENSIONS)})")
            for p in found:
                add(p)
        elif os.path.exists(spec):
            add(spec)
        elif glob.has_magic(spec):
            found = sorted(p for p in glob.glob(spec, recursive=True) if os.path.isfile(p))
            if not found:
                errors.append(f"{spec}: no file matches this pattern")
            for p in found:
                add(p)
        else:
            errors.append(f"{spec}: no such file or folder")
    return files, errors


def outdir_is_input_folder(specs, files, outdir) -> bool:
    """True when OUTDIR is also an input folder: a folder INPUT, the folder of an input file, or
    OUTDIR inside the fixed root of a recursive ('**') glob pattern."""
    out = os.path.realpath(outdir)
    for spec in specs:
        if os.path.isdir(spec):
            if os.path.realpath(spec) == out:
                return True
        elif not os.path.exists(spec) and glob.has_magic(spec) and "**" in spec:
            parts = spec.replace(os.sep, "/").split("/")
            fixed = []
            for part in parts:
                if glob.has_magic(part):
                    break
                fixed.append(part)
            root = "/".join(fixed) or ("/" if spec.startswith(("/", os.sep)) else ".")
            root = os.path.realpath(root)
            if out == root or out.startswith(root.rstrip(os.sep) + os.sep):
                return True
    return any(os.path.realpath(os.path.dirname(os.path.abspath(p))) == out for p in files)


def plan_outputs(files, outdir, save_transmission=False):
    """Output names for ``files`` (in order): OUTDIR/<stem>.png, clashes get _1, _2, ...; names of
    input files are never used. Returns a list of (out_path, t_path or None)."""
    inputs = {os.path.realpath(p) for p in files}
    taken = set()
    plan = []
    for p in files:
        stem = os.path.splitext(os.path.basename(p))[0]
        i = 0
        while True:
            name = stem if i == 0 else f"{stem}_{i}"
            cands = [os.path.join(outdir, name + ".png")] + ([os.path.join(outdir, name + "_t.png")]
                                                             if save_transmission else [])
            keys = [os.path.realpath(c) for c in cands]
            if not any(k in taken or k in inputs for k in keys):
                break
            i += 1
        taken.update(keys)
        plan.append((cands[0], cands[1] if save_transmission else None))
    return plan


def _current_umask() -> int:
    """The process umask, read without changing it where the OS allows (Linux /proc), else by
    the os.umask set-and-restore idiom."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def write_atomic(path, pixels, alpha=None, icc_profile=None, overwrite=False):
    """Write a PNG through a temporary file in the same folder and a rename. Without ``overwrite``
    an existing ``path`` raises FileExistsError (and is left untouched). The file gets the usual
    mode of a new file, 0666 minus the umask (tempfile.mkstemp creates it 0600)."""
    from .io import write_png
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", suffix=".tmp", dir=folder)
    try:
        mode = 0o666 & ~_current_umask()
        if hasattr(os, "fchmod"):
            os.fchmod(fd, mode)
        else:  # pragma: no cover (Windows)
            os.chmod(tmp, mode)
        with os.fdopen(fd, "wb") as f:
            write_png(f, pixels, alpha, icc_profile)
            f.flush()
            os.fsync(f.fileno())
        if overwrite:
            os.replace(tmp, path)
        else:
            try:
                os.link(tmp, path)       # atomic and never replaces an existing file
            except FileExistsError:
                raise FileExistsError(f"{path}: exists (use --overwrite to replace it)") from None
            except OSError:              # a file system without hard links
                if os.path.exists(path):
                    raise FileExistsError(f"{path}: exists (use --overwrite to replace it)") from None
                os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _validate_dcp_args(args):
    from .nn.dehazers import _check_params
    try:
        _check_params(args.patch, args.omega, args.top, args.radius, args.eps, args.t0)
    except (TypeError, ValueError) as e:
        name = str(e).split()[0]
        flag = {"r": "--radius"}.get(name, "--" + name)
        _usage_error(f"{flag}: {e}")


def _validate_tile(args):
    from .nn.dehazers import tile_halo
    if args.tile < 0:
        _usage_error(f"--tile: tile must be >= 0 (0: never tile), got {args.tile}")
    halo = tile_halo(args.patch, args.radius)
    if 0 < args.tile < 2 * halo:
        _usage_error(f"--tile: tile must be 0 or >= {2 * halo} (twice the halo patch//2 + 2*radius + 1 = {halo} "
                     f"of each tile), got {args.tile}")


def dehaze_image(img, *, patch=15, omega=0.95, top=0.001, radius=60, eps=1e-3, t0=0.1, tile=2048,
                 device="cpu", backend="auto", save_transmission=False, progress=None):
    """Dehaze a :class:`fastdehaze.io.LoadedImage`: returns (pixels, t pixels or None), integer
    arrays of the image's bit depth ([H,W,1] for grey images, [H,W,3] for colour)."""
    from .io import as_rgb, to_tensor
    from .nn.dehazers import dehaze_tiled
    x = as_rgb(to_tensor(img.pixels))
    res = dehaze_tiled(x, patch, omega, top, radius, eps, t0, tile=tile if tile > 0 else max(x.shape[-2:]),
                       return_all=save_transmission, backend=backend, device=device, out_bits=img.bits,
                       progress=progress)
    J, t = (res[0], res[1]) if save_transmission else (res, None)
    J = J[0].permute(1, 2, 0).cpu().numpy()
    if img.is_gray:
        J = J[:, :, :1]   # the three channels are equal for a replicated grey input
    t = None if t is None else t[0].permute(1, 2, 0).cpu().numpy()
    return J, t


def cmd_dehaze(args) -> int:
    from .io import ImageReadError, read_image
    # every usage error (status 2) before any file is read
    _validate_dcp_args(args)
    _validate_tile(args)
    device = _resolve_device(args.device)
    _make_output_folder(args.output)
    files, errors = expand_inputs(args.inputs)
    for e in errors:
        print(f"fastdehaze: {e}", file=sys.stderr)
    if outdir_is_input_folder(args.inputs, files, args.output):
        print(f"fastdehaze: warning: the output folder {args.output} is also an input folder: images an "
              "earlier run wrote there are inputs of this run and are dehazed again under new names "
              "(a.png -> a_1.png); this run's own outputs are never read", file=sys.stderr)
    plan = plan_outputs(files, args.output, args.save_transmission)
    failed = len(errors)
    from tqdm import tqdm
    bar = tqdm(total=len(files), unit="img", disable=args.quiet or None, file=sys.stderr, dynamic_ncols=True)
    for path, (out, tout) in zip(files, plan):
        bar.set_postfix_str(os.path.basename(path), refresh=True)
        try:
            if not args.overwrite:
                for o in (out, tout):
                    if o is not None and os.path.exists(o):
                        raise FileExistsError(f"{o}: exists (use --overwrite to replace it)")
            img = read_image(path)
            J, t = dehaze_image(img, patch=args.patch, omega=args.omega, top=args.top, radius=args.radius,
                                eps=args.eps, t0=args.t0, tile=args.tile, device=device, backend=args.backend,
                                save_transmission=args.save_transmission)
            write_atomic(out, J, img.alpha, img.icc_profile if img.bits == 8 else None, args.overwrite)
            if tout is not None:
                write_atomic(tout, t, None, None, args.overwrite)
        except (ImageReadError, FileExistsError) as e:
            failed += 1
            bar.write(f"fastdehaze: skipped {path}: {e}", file=sys.stderr)
        except (RuntimeError, ValueError, TypeError, OSError, MemoryError) as e:
            failed += 1
            bar.write(f"fastdehaze: failed {path}: {type(e).__name__}: {e}", file=sys.stderr)
        bar.update(1)
    bar.close()
    ok = len(files) - (failed - len(errors))
    print(f"fastdehaze: {ok} of {len(files)} image(s) written to {args.output}"
          + (f"; {failed} problem(s) reported above" if failed else ""), file=sys.stderr)
    return 1 if failed else 0


# ---- demo ---------------------------------------------------------------------------------------

def haze_demo_image(J, A=0.9, beta=1.5):
    """Synthetic haze for the demo: J [1,3,H,W] in [0, 1] -> (I, t). Depth proxy: d grows linearly
    from 0 at the bottom row to 1 at the top row; t = exp(-beta d); I = J t + A (1 - t)."""
    import torch
    from . import ops
    H, W = J.shape[-2:]
    d = torch.linspace(1.0, 0.0, H, dtype=J.dtype).view(1, 1, H, 1).expand(1, 1, H, W).contiguous()
    synth = getattr(ops, "synthesize_haze", None)
    if synth is not None:
        I = synth(J, A, depth=d, beta=beta)
    else:   # the same formula, until the asm family exports synthesize_haze
        t = torch.exp(-beta * d)
        I = J * t + A * (1 - t)
    return I, torch.exp(-beta * d)


def _load_sample(name):
    try:
        import skimage.data
    except ImportError:
        raise SystemExit("fastdehaze demo: the bundled photos come from scikit-image (pip install scikit-image)")
    fn = getattr(skimage.data, name, None)
    if fn is None or not callable(fn):
        _usage_error(f"--image: scikit-image has no sample image {name!r}")
    a = fn()
    if a.ndim == 2:
        a = a[:, :, None].repeat(3, axis=2)
    return a[:, :, :3]


def cmd_demo(args) -> int:
    import numpy as np
    import torch
    import torch.nn.functional as F
    from skimage.metrics import peak_signal_noise_ratio, structural_similarity
    import fastdehaze
    from .io import quantize
    from .nn.dehazers import DarkChannelDehazer
    _validate_dcp_args(args)
    device = _resolve_device(args.device)
    _make_output_folder(args.output)
    clean = torch.from_numpy(_load_sample(args.image)).permute(2, 0, 1).unsqueeze(0).to(torch.float32) / 255
    size = 96 if args.quick and args.size is None else args.size
    if size:
        H, W = clean.shape[-2:]
        s = size / max(H, W)
        clean = F.interpolate(clean, size=(max(1, round(H * s)), max(1, round(W * s))), mode="area").clamp(0, 1)
    repeat = 1 if args.quick else max(1, args.repeat)
    hazy, _ = haze_demo_image(clean, args.A, args.beta)

    def np_img(x):
        return x[0].permute(1, 2, 0).double().cpu().numpy()

    def score(x):
        a, b = np_img(x), np_img(clean)
        return (peak_signal_noise_ratio(b, a, data_range=1.0),
                structural_similarity(b, a, data_range=1.0, channel_axis=2))

    if args.backends:
        backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    else:
        avail = [fastdehaze.available_backends(device, fam) for fam in ("dcp", "filters", "asm")]
        backends = [b for b in ("reference", "cpu", "cuda", "triton") if all(a[b] for a in avail)]
    H, W = clean.shape[-2:]
    print(f"fastdehaze demo: scikit-image '{args.image}' {W}x{H}, haze A={args.A} beta={args.beta} "
          f"(depth proxy: 0 at the bottom row to 1 at the top), device {device}")
    p, s = score(hazy)
    print(f"  {'hazy input':<12} PSNR {p:6.2f} dB  SSIM {s:.4f}")
    x = hazy.to(device)
    results = {}
    failed = 0
    for b in backends:
        model = DarkChannelDehazer(args.patch, args.omega, args.top, args.radius, args.eps, args.t0, backend=b)
        try:
            times = []
            for _ in range(repeat):
                if device.type == "cuda":
                    torch.cuda.synchronize()
                t_start = time.perf_counter()
                J = model(x)
                if device.type == "cuda":
                    torch.cuda.synchronize()
                times.append(time.perf_counter() - t_start)
        except (RuntimeError, ValueError, ImportError) as e:
            failed += 1
            print(f"  DCP {b:<8} failed: {type(e).__name__}: {e}")
            continue
        results[b] = J.cpu()
        p, s = score(results[b])
        ms = min(times) * 1e3
        print(f"  DCP {b:<8} PSNR {p:6.2f} dB  SSIM {s:.4f}  time {ms:9.1f} ms  ({H * W / min(times) / 1e6:7.2f} MP/s)")
    if not results:
        print("fastdehaze demo: no backend ran", file=sys.stderr)
        return 1
    shown = next(b for b in ("cuda", "cpu", "triton", "reference") if b in results)
    side = torch.cat([hazy, results[shown], clean], dim=3)
    out = os.path.join(args.output, f"demo_{args.image}.png")
    write_atomic(out, quantize(side[0].permute(1, 2, 0).contiguous(), 8).numpy(), overwrite=True)
    print(f"fastdehaze demo: wrote {out} (hazy | dehazed with backend {shown} | clean); "
          "PSNR/SSIM from skimage.metrics (data_range 1, SSIM over the 3 channels)")
    return 1 if failed else 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
