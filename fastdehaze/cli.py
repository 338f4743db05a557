"""The ``fastdehaze`` command (also ``python -m fastdehaze``).

    fastdehaze dehaze INPUT... -o OUTDIR [options]        dark-channel-prior dehazing of photos
    fastdehaze dehaze INPUT... -o OUTDIR --model M [...]  dehazing with a trained model file
    fastdehaze synth CLEAR DEPTH -o OUT [options]          a hazy training set (RESIDE ITS layout)
    fastdehaze models [FILE...]                            the shipped models (or what files hold)
    fastdehaze demo [-o OUTDIR] [--model M]                hazes a bundled photo, dehazes it (DCP, model), scores it
    fastdehaze info                                        which backends are built / loaded

Layers: this module uses ``fastdehaze.nn`` (DarkChannelDehazer, dehaze_tiled, model files,
tiled_forward, HazeSynthesis) and ``fastdehaze.io`` only.
"""
from __future__ import annotations

import argparse
import contextlib
import glob
import hashlib
import os
import signal
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
Files are written atomically: a temporary file in OUTDIR, then a rename; an interrupted run
(Ctrl-C, SIGTERM) removes its temporary file, prints how many images were written and exits
with status 130 (SIGINT) or 143 (SIGTERM).

Values: pixels are taken as stored (sRGB code values scaled to [0, 1], no linearisation, no
colour management), as in He et al. and all public DCP code. EXIF orientation is applied.
8-bit inputs give 8-bit PNGs, 16-bit PNG/TIFF inputs give 16-bit PNGs; floats are rounded and
clamped to the integer range (saturated, never wrapped). Grey images are dehazed as three
equal channels and written back as grey (with --model: the mean of the model's three output
channels). An alpha channel is kept aside (the prior and the model never see it) and
re-attached unchanged.

Large photos: images with a side longer than --tile are processed in tiles (DCP: A from a
first pass over the whole image, then tiles with halos of patch//2 + 2*radius + 1 pixels, 128
at the defaults), which gives the untiled result to rounding in bounded memory. A positive
--tile must be at least twice the halo (256 at the defaults): a smaller tile is a usage error,
because each tile is computed with its halos and the work per image would grow as
((tile + 2 halo) / tile)^2. Without --tile the tile is 2048, or twice the halo when that is
larger (a large --patch or --radius). Images with more than --max-pixels pixels (default:
Pillow's decompression-bomb limit, 178,956,970) are refused per file with a message (the
others are still processed); --max-pixels 0 allows any size (memory: the 8/16-bit image, the
output and one tile's work, plus a float [H,W] map for the DCP).

Model files (--model PATH_OR_NAME: a file written by fastdehaze.nn.save_model, or a name from
`fastdehaze models`): the model runs on --device (same default as the DCP), in float32, or
under CUDA autocast with --precision fp16|bf16, with channels_last tensors on CUDA. Photos
larger than --tile run in overlapping tiles: the model's global context (e.g. A) is computed
once on the whole image and passed to every tile, and each tile has a halo of
receptive_field//2 + 1 pixels (the model declares its receptive field), so tiles give the
untiled result (within 1/255 of the 8-bit output). The DCP options and --save-transmission do
not apply to a model. A model file that names a user class ("module:Class") imports that
module: it is refused unless --trust-code is given.

Output folder: created if missing; when it cannot be created or written to (it is a file, no
permission, a read-only file system, ...) the command stops with a one-line message and status
2 before any image is read. When OUTDIR is also an input folder (a folder INPUT, the folder of
an input file, or inside the root of a '**' pattern) a warning is printed once: images that an
earlier run wrote there are inputs of this run and are dehazed again under new names
(a.png -> a_1.png); the files this run writes are never read by it. New files get the usual
mode for new files, 0666 minus the umask (0644 under umask 022).

Exit status: 0 when every input was dehazed and written, 1 when any input failed (unreadable,
corrupt, too large, existing output, ...; the others are still processed), 2 for a usage error:
a bad option value (--patch, --omega, --top, --radius, --eps, --t0, --tile, --max-pixels,
--device, a CUDA device that is not there, a --backend that cannot run on the device, a
--model that cannot be loaded) or an output folder that cannot be created or written; these
are checked before any file is read, and reported in one line "fastdehaze: <option>: <reason>".
130 / 143 when interrupted by SIGINT (Ctrl-C) / SIGTERM.
"""

SYNTH_EPILOG = """\
Pairs: every image file of CLEAR (a folder, a file or a glob pattern) is matched with the depth
map in the folder DEPTH whose file stem is the same, or the same plus "_depth" (a.png with
a.png, a.npy or a_depth.png; .npy holds a 2-D float array; a "_depth" map wins, so DEPTH may
also hold the photos); a clear image without one, or with two, is reported and skipped. A file
of CLEAR named <stem>_depth.* next to a <stem>.* of CLEAR is that image's depth map, not a clear
image (so CLEAR and DEPTH may be the same folder). The depth map is resized to the image
(bilinear).

Depth (--depth-kind depth, default): larger values are farther; the map is divided by its
maximum per image, so d is in [0, 1] (0 at the camera), the per-image normalised convention of
RESIDE ITS. --depth-kind disparity (inverse depth, e.g. MiDaS / Depth Anything maps; larger is
nearer): with q = disparity / max(disparity), d = 1 / (q + 0.05), then divided by its maximum:
sky (q = 0) is at d = 1 and the nearest pixel at 0.05 / 1.05. Disparity is never used as depth.

Haze: fastdehaze.nn.HazeSynthesis(preset) draws A and beta per hazy image from the RESIDE
ranges (its: indoor, A in [0.7, 1.0], beta in [0.6, 1.8]; ots: outdoor, A in [0.8, 1.0], beta
in [0.04, 0.2]) and computes I = J t + A (1 - t), t = exp(-beta d). The draws of an image come
from a generator seeded with SHA-256(seed, image id), so an image gets the same haze whatever
else is in the set.

Output (RESIDE ITS layout): OUT/clear/<id>.png, OUT/hazy/<id>_<k>.png for k = 1..--per-image,
and OUT/haze.csv with one row per hazy image: hazy, clear, A_r, A_g, A_b, beta, seed (rows of
an earlier run into OUT are kept; rewritten images replace theirs). <id> is
the clear file's stem with "_" replaced by "-" (so "<id>_<k>" splits at its first underscore);
clashes get "-1", "-2", ... 8-bit clear images give 8-bit outputs, 16-bit give 16-bit. Writes
are atomic and never replace an existing file without --overwrite. Exit status as dehaze.
"""

DCP_DEFAULTS = dict(patch=15, omega=0.95, top=0.001, radius=60, eps=1e-3, t0=0.1)
#: scikit-image sample photos bundled with its wheel (nothing is downloaded)
DEMO_IMAGES = ("astronaut", "brick", "camera", "chelsea", "coffee", "coins", "grass", "gravel",
               "hubble_deep_field", "immunohistochemistry", "moon", "page", "retina", "rocket", "text")
PRECISIONS = ("fp32", "fp16", "bf16")
#: the demo's smallest --size (long side): the short side of the widest photo (text, 448x172) must
#: still hold SSIM's 11x11 window
DEMO_MIN_SIZE = 32
#: the model the demo runs by default when it ships (else the first of fastdehaze.nn.list_models())
DEMO_DEFAULT_MODEL = "prm_dcp_sots_indoor"


def _add_dcp_args(p):
    g = p.add_argument_group("dark channel prior parameters (defaults from He et al. / SPEC; not with --model)")
    g.add_argument("--patch", type=int, default=None, help="dark-channel window, odd (default 15)")
    g.add_argument("--omega", type=float, default=None, help="fraction of haze removed, in [0, 1] (default 0.95)")
    g.add_argument("--top", type=float, default=None,
                   help="fraction of brightest dark-channel pixels averaged for A (default 0.001)")
    g.add_argument("--radius", type=int, default=None, help="guided-filter radius in pixels (default 60)")
    g.add_argument("--eps", type=float, default=None, help="guided-filter regulariser (default 1e-3)")
    g.add_argument("--t0", type=float, default=None, help="lower bound of the transmission (default 0.1)")


def _add_run_args(p, backend_help="kernel backend (default auto: the fastest for the device)"):
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (cuda when available; default)")
    p.add_argument("--backend", default="auto", choices=("auto", "reference", "cpu", "cuda", "triton"),
                   help=backend_help)


def build_parser() -> argparse.ArgumentParser:
    from .io import IMAGE_EXTENSIONS
    parser = argparse.ArgumentParser(prog="fastdehaze", description="Single-image dehazing with fused kernels.")
    sub = parser.add_subparsers(dest="command", metavar="{dehaze,synth,models,demo,info,train,export,eval}")
    sub.required = True

    d = sub.add_parser("dehaze", help="dehaze photos with the dark channel prior or a model file",
                       description="Dehaze photos with the dark channel prior (He et al., CVPR 2009) and a "
                                   "guided-filter-refined transmission (He et al., ECCV 2010), or with a "
                                   "trained model file (--model).",
                       epilog=DEHAZE_EPILOG % {"exts": " ".join(IMAGE_EXTENSIONS)},
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    d.add_argument("inputs", nargs="+", metavar="INPUT", help="image files, folders or glob patterns")
    d.add_argument("-o", "--output", required=True, metavar="OUTDIR", help="output folder (created if missing)")
    d.add_argument("--model", default=None, metavar="PATH_OR_NAME",
                   help="a model file (.safetensors from fastdehaze.nn.save_model) or a shipped model's name "
                        "(see `fastdehaze models`) instead of the dark channel prior")
    d.add_argument("--trust-code", action="store_true",
                   help="allow a model file that names a user class (module:Class): imports and runs that module")
    d.add_argument("--precision", default="fp32", choices=PRECISIONS,
                   help="with --model: fp32 (default), or fp16/bf16 autocast (CUDA only)")
    d.add_argument("--overwrite", action="store_true", help="replace existing outputs (never an input)")
    d.add_argument("--save-transmission", action="store_true", help="also write <stem>_t.png (refined t; DCP only)")
    d.add_argument("--tile", type=int, default=None,
                   help="tile size in pixels for images with a longer side (default 2048, or twice the halo if "
                        "larger; 0: never tile); a positive tile must be >= 2 * halo, the DCP halo being "
                        "patch//2 + 2*radius + 1, i.e. >= 256 at the defaults")
    d.add_argument("--max-pixels", type=int, default=None, metavar="N",
                   help="refuse images with more than N pixels (default: Pillow's decompression-bomb limit, "
                        "178956970; 0: no limit)")
    d.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    _add_run_args(d, "kernel backend of the DCP (default auto: the fastest for the device); with --model the "
                     "backends are the model's own")
    _add_dcp_args(d)

    s = sub.add_parser("synth", help="make a hazy training set from clear images and depth maps",
                       description="Synthesise haze on clear images from their depth maps with "
                                   "fastdehaze.nn.HazeSynthesis (atmospheric scattering model) and write the "
                                   "pairs in the RESIDE ITS layout.",
                       epilog=SYNTH_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    s.add_argument("clear", metavar="CLEAR", help="folder (or file / glob pattern) of clear images")
    s.add_argument("depth", metavar="DEPTH", help="folder of depth (or disparity) maps, same file stems")
    s.add_argument("-o", "--output", required=True, metavar="OUT", help="output folder (created if missing)")
    s.add_argument("--preset", default="its", choices=("its", "ots"), help="RESIDE ranges of A and beta (default its)")
    s.add_argument("--depth-kind", default="depth", choices=("depth", "disparity"),
                   help="what the maps hold (default depth; disparity is converted, see below)")
    s.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    s.add_argument("--per-image", type=int, default=1, metavar="N", help="hazy versions of each image (default 1)")
    s.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    s.add_argument("--max-pixels", type=int, default=None, metavar="N", help="as dehaze --max-pixels")
    s.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    s.add_argument("--device", default="cpu", help="cpu (default), cuda, cuda:N or auto")

    mo = sub.add_parser("models", help="list the shipped models (or describe model files)",
                        description="Lists the trained models that ship inside the package (usable as "
                                    "`dehaze --model NAME`): name, size, architecture, training metadata. With "
                                    "FILE arguments, verifies and describes those model files instead.")
    mo.add_argument("files", nargs="*", metavar="FILE", help="model files to describe")

    m = sub.add_parser("demo", help="haze a bundled photo, dehaze it with each backend and the shipped model, "
                                    "print PSNR/SSIM and times",
                       description="Hazes a photo bundled with scikit-image through the scattering model "
                                   "I = J t + A (1 - t), t = exp(-beta d), with a depth proxy d that grows "
                                   "linearly from 0 at the bottom row to 1 at the top row (the ground is near, "
                                   "the top of the frame far), dehazes it with every available DCP backend and "
                                   "with the shipped model (--model), prints PSNR/SSIM (fastdehaze.metrics) "
                                   "against the clear photo and the time of each, and writes hazy | DCP | model | "
                                   "clear side by side as a PNG (hazy | DCP | clear with --model none).")
    m.add_argument("-o", "--output", default="out", metavar="OUTDIR", help="output folder (default ./out)")
    m.add_argument("--image", default="astronaut", choices=DEMO_IMAGES,
                   help="scikit-image sample bundled with it: astronaut (default), chelsea, coffee, ...")
    m.add_argument("--A", type=float, default=0.9,
                   help="atmospheric light of the synthetic haze, in (0, 1] (default 0.9)")
    m.add_argument("--beta", type=float, default=1.5,
                   help="scattering coefficient for the depth proxy, > 0 (default 1.5)")
    m.add_argument("--backends", default=None,
                   help="comma list of backends to run (default: every one available for the device)")
    m.add_argument("--size", type=int, default=None,
                   help=f"resize the photo to this many pixels on its long side, at least {DEMO_MIN_SIZE} (the "
                        "short side must hold SSIM's 11x11 window; default: the photo's own size, 96 with --quick)")
    m.add_argument("--repeat", type=int, default=3,
                   help="timed runs per backend and of the model, >= 1; the best is reported (default 3)")
    m.add_argument("--model", default=None, metavar="NAME|PATH",
                   help="the model of the third panel: a shipped model's name (see `fastdehaze models`) or a model "
                        "file (default: the shipped model, " + DEMO_DEFAULT_MODEL + " when it ships); 'none': no "
                        "model panel (hazy | DCP | clear). It runs on --device in float32")
    m.add_argument("--trust-code", action="store_true",
                   help="allow a --model file that names a user class (module:Class): imports and runs that module")
    m.add_argument("--quick", action="store_true", help="a 96-pixel image and one run (for tests)")
    m.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (cuda when available; default)")
    m.add_argument("--backend", default=None, choices=("reference", "cpu", "cuda", "triton"),
                   help="run this one backend only (the same as --backends BACKEND)")
    _add_dcp_args(m)

    sub.add_parser("info", help="print which backends are built and loaded")
    from .train.cli import add_commands as _add_train_commands  # train, export, eval (fastdehaze.train)
    _add_train_commands(sub)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "info":
        import fastdehaze
        print(fastdehaze.backend_report())
        return 0
    if args.command == "models":
        return cmd_models(args)
    if args.command == "synth":
        return cmd_synth(args)
    if args.command in ("train", "export", "eval"):
        from .train.cli import run_command
        return run_command(args)
    if "triton" in (getattr(args, "backend", None), *(getattr(args, "backends", None) or "").split(",")) \
            and _device_type(args.device) == "cpu":
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


def _check_backend(backend, device, families=("dcp", "filters", "asm"), flag="--backend"):
    """A backend that cannot run on ``device`` is a usage error (before any file is read)."""
    import fastdehaze
    if backend in (None, "auto"):
        return
    for fam in families:
        if not fastdehaze.available_backends(device, fam).get(backend, False):
            why = (f"it runs on CUDA tensors and the device is {device}" if backend == "cuda" and device.type != "cuda"
                   else f"it is not available for the {fam} ops on {device} (see `fastdehaze info`)")
            _usage_error(f"{flag}: {backend!r} cannot run here: {why}")


def _make_output_folder(outdir: str):
    """os.makedirs(outdir) and a write probe; a usage error (status 2, one line naming the folder)
    when the folder cannot be created or written to."""
    try:
        os.makedirs(outdir, exist_ok=True)
    except OSError as e:
        if os.path.exists(outdir) and not os.path.isdir(outdir):
            reason = "it exists and is not a folder"
        else:
            reason = e.strerror or str(e)
        _usage_error(f"-o/--output: cannot create the output folder {outdir!r}: {reason}")
    try:
        fd, probe = tempfile.mkstemp(prefix=".fastdehaze-probe-", dir=outdir)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        _usage_error(f"-o/--output: cannot write to the output folder {outdir!r}: {e.strerror or e}")


def _check_max_pixels(args):
    if args.max_pixels is not None and args.max_pixels < 0:
        _usage_error(f"--max-pixels: must be >= 0 (0: no limit), got {args.max_pixels}")


# ---- interruption -------------------------------------------------------------------------------

class Interrupted(BaseException):
    """Raised in the main thread by SIGTERM (and standing for SIGINT) so that ``finally`` clauses
    remove temporary files; the command then prints its summary and exits 128 + signal."""

    def __init__(self, signum):
        super().__init__(signum)
        self.signum = signum


@contextlib.contextmanager
def _signals_raise():
    """While inside: SIGTERM raises Interrupted (instead of killing the process without cleanup)."""
    def handler(signum, frame):
        raise Interrupted(signum)

    try:
        old = signal.signal(signal.SIGTERM, handler)
    except ValueError:     # not the main thread: leave signals alone
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


def _reason(e: BaseException, path: str) -> str:
    """The message of ``e`` without a leading "<path>: " (the error line names the path once)."""
    msg = str(e)
    for p in {path, os.fspath(path)}:
        if msg.startswith(p + ": "):
            return msg[len(p) + 2:]
    return msg


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
    mode of a new file, 0666 minus the umask (tempfile.mkstemp creates it 0600). The temporary
    file is removed on any error or interruption (KeyboardInterrupt, :class:`Interrupted`)."""
    from .io import write_png
    folder = os.path.dirname(os.path.abspath(path))
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", suffix=".tmp", dir=folder)
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
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)


def _validate_dcp_args(args, model=False):
    """Fill the DCP defaults; with --model any DCP option given is a usage error."""
    from .nn.dehazers import _check_params
    given = [k for k in DCP_DEFAULTS if getattr(args, k) is not None]
    if model:
        if given:
            _usage_error(f"--{given[0]}: a dark-channel-prior option; it does not apply to --model")
        return
    for k, v in DCP_DEFAULTS.items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    try:
        _check_params(args.patch, args.omega, args.top, args.radius, args.eps, args.t0)
    except (TypeError, ValueError) as e:
        name = str(e).split()[0]
        flag = {"r": "--radius"}.get(name, "--" + name)
        _usage_error(f"{flag}: {e}")


def _validate_tile(args, halo, what):
    """--tile against a halo: explicit tiles below 2 * halo are a usage error; the default is
    max(2048, 2 * halo)."""
    if args.tile is None:
        args.tile = max(2048, 2 * halo)
        return
    if args.tile < 0:
        _usage_error(f"--tile: tile must be >= 0 (0: never tile), got {args.tile}")
    if 0 < args.tile < 2 * halo:
        _usage_error(f"--tile: tile must be 0 or >= {2 * halo} (twice the halo {what} = {halo} "
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


class _ModelTiles:
    """A model seen by :func:`fastdehaze.nn.progressive.tiled_forward` as integer tiles in,
    quantised tiles out: each tile is moved to the device, scaled to the model's value range,
    run (autocast, channels_last as asked, inference mode), quantised to ``bits`` and brought
    back, so only the image, the output and one tile's activations exist at a time."""

    def __init__(self, model, *, device, bits, scale, gray, autocast_dtype=None, channels_last=False):
        self.model, self.device, self.bits, self.scale, self.gray = model, device, bits, scale, gray
        self.autocast_dtype, self.channels_last = autocast_dtype, channels_last
        info = getattr(model, "model_file_info", {}) or {}
        self.lo, self.hi = (info.get("value_range") or getattr(model, "value_range", (0.0, 1.0)))
        self.pad_multiple = int(getattr(model, "pad_multiple", None) or info.get("pad_multiple") or 1)
        rf = getattr(model, "receptive_field", None)
        self.receptive_field = rf if rf is not None else info.get("receptive_field")
        self.has_context = callable(getattr(model, "global_context", None))

    def _in(self, piece):
        import torch
        x = piece.to(self.device).to(torch.float32).div_(self.scale)
        if (self.lo, self.hi) != (0.0, 1.0):
            x = x.mul_(self.hi - self.lo).add_(self.lo)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x

    def _ctx(self):
        import torch
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)

    def global_context(self, I):
        import torch
        if not self.has_context:
            return {}
        with torch.inference_mode(), self._ctx():
            return self.model.global_context(self._in(I))

    def __call__(self, piece, context=None):
        import torch
        from .io import quantize
        with torch.inference_mode(), self._ctx():
            x = self._in(piece)
            y = self.model(x, context=context) if (context is not None and self.has_context) else self.model(x)
            del x
        if isinstance(y, (tuple, list)):
            y = y[0]
        if not isinstance(y, torch.Tensor) or y.dim() != 4 or y.shape[1] != 3 or y.shape[-2:] != piece.shape[-2:]:
            raise RuntimeError(f"the model returned {getattr(y, 'shape', type(y).__name__)} for an input of shape "
                               f"{tuple(piece.shape)}; expected [B,3,H,W] of the same size")
        y = y.float()
        if (self.lo, self.hi) != (0.0, 1.0):
            y = (y - self.lo) / (self.hi - self.lo)
        if self.gray:
            y = y.mean(1, keepdim=True)
        return quantize(y, self.bits).cpu()


def model_image(img, model, *, tile=2048, device="cpu", precision="fp32", channels_last=None, progress=None):
    """Dehaze a :class:`fastdehaze.io.LoadedImage` with a model (see ``dehaze --model``): returns
    pixels of the image's bit depth, [H,W,1] for grey images (mean of the output channels) or
    [H,W,3]. Images with a side longer than ``tile`` (> 0) run in overlapping tiles through
    :func:`fastdehaze.nn.progressive.tiled_forward` with the model's global context of the whole
    image and a halo of receptive_field // 2 + 1."""
    import torch
    from .io import as_rgb, to_tensor
    from .nn.progressive import tiled_forward
    device = torch.device(device)
    x = as_rgb(to_tensor(img.pixels))
    H, W = x.shape[-2:]
    adt = {"fp32": None, "fp16": torch.float16, "bf16": torch.bfloat16}[precision]
    tiles = _ModelTiles(model, device=device, bits=img.bits, scale=float(img.max_value), gray=img.is_gray,
                        autocast_dtype=adt, channels_last=(device.type == "cuda") if channels_last is None else channels_last)
    if tile <= 0 or max(H, W) <= tile:
        out = tiles(x)
    else:
        if tiles.receptive_field is None:
            raise ValueError(f"the model declares no receptive_field, so a {W}x{H} image cannot be tiled exactly; "
                             f"use --tile 0 (or a tile >= {max(H, W)})")
        ctx = tiles.global_context(x)
        out = torch.empty((1, 1 if img.is_gray else 3, H, W),
                          dtype=torch.uint8 if img.bits == 8 else torch.uint16)
        tiled_forward(tiles, x, tile, int(tiles.receptive_field) // 2 + 1, context=ctx, out=out, progress=progress)
    return out[0].permute(1, 2, 0).numpy()


def _is_torch_checkpoint(path) -> bool:
    """Whether ``path`` looks like a ``torch.save`` file (what ``fastdehaze train`` writes), judged
    from its container only, never unpickled: a zip archive holding a ``data.pkl`` (the format
    since torch 1.6) or a file starting with a pickle protocol 2-5 opcode (the legacy format)."""
    import zipfile
    try:
        if not os.path.isfile(path):
            return False
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as z:
                return any(n == "data.pkl" or n.endswith("/data.pkl") for n in z.namelist())
        with open(path, "rb") as f:
            head = f.read(2)
        return len(head) == 2 and head[0] == 0x80 and 2 <= head[1] <= 5
    except (OSError, zipfile.BadZipFile):
        return False


def _load_cli_model(args, device):
    """--model -> the model on ``device`` (a usage error, status 2, when it cannot be loaded)."""
    from .nn.files import ModelFileError, load_model
    try:
        model = load_model(args.model, trust_code=args.trust_code, map_location="cpu")
    except ModelFileError as e:
        if _is_torch_checkpoint(args.model):
            _usage_error(f"--model: {args.model} is a training checkpoint (a torch pickle of `fastdehaze train`), "
                         f"not a model file: run `python3 -m fastdehaze export {args.model} model.safetensors` "
                         "first and pass --model model.safetensors")
        _usage_error(f"--model: {e}")
    except ValueError as e:   # unknown name, trust_code refusal
        _usage_error(f"--model: {e}")
    except (OSError, RuntimeError, ImportError) as e:
        _usage_error(f"--model: {args.model}: {type(e).__name__}: {e}")
    import torch
    model = model.to(device)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    return model


def _run_batch(args, files, errors, plan, process, summary_what="image(s)"):
    """The shared per-file loop of dehaze (DCP and --model): ``process(path, outs)`` writes one
    input's outputs; failures are reported per file ("fastdehaze: failed PATH: reason") and the
    others go on; Ctrl-C / SIGTERM stop after cleaning up. Prints "N of M ... written" and
    returns the exit status."""
    from tqdm import tqdm
    from .io import ImageReadError
    failed, written = len(errors), 0
    interrupted = None
    bar = tqdm(total=len(files), unit="img", disable=args.quiet or None, file=sys.stderr, dynamic_ncols=True)
    try:
        with _signals_raise():
            for path, outs in zip(files, plan):
                bar.set_postfix_str(os.path.basename(path), refresh=True)
                try:
                    process(path, outs)
                    written += 1
                except (ImageReadError, FileExistsError) as e:
                    failed += 1
                    bar.write(f"fastdehaze: skipped {path}: {_reason(e, path)}", file=sys.stderr)
                except (RuntimeError, ValueError, TypeError, OSError, MemoryError) as e:
                    failed += 1
                    bar.write(f"fastdehaze: failed {path}: {type(e).__name__}: {_reason(e, path)}", file=sys.stderr)
                bar.update(1)
    except KeyboardInterrupt:
        interrupted = signal.SIGINT
    except Interrupted as e:
        interrupted = e.signum
    bar.close()
    if interrupted is not None:
        name = "Ctrl-C (SIGINT)" if interrupted == signal.SIGINT else signal.Signals(interrupted).name
        print(f"fastdehaze: interrupted by {name}: {written} of {len(files)} {summary_what} written to "
              f"{args.output}; the one in progress was not written (no temporary file left)", file=sys.stderr)
        return 128 + int(interrupted)
    print(f"fastdehaze: {written} of {len(files)} {summary_what} written to {args.output}"
          + (f"; {failed} problem(s) reported above" if failed else ""), file=sys.stderr)
    return 1 if failed else 0


def cmd_dehaze(args) -> int:
    from .io import read_image
    # every usage error (status 2) before any file is read
    use_model = args.model is not None
    _validate_dcp_args(args, model=use_model)
    _check_max_pixels(args)
    device = _resolve_device(args.device)
    if use_model:
        if args.save_transmission:
            _usage_error("--save-transmission: the DCP's transmission; a model gives none (drop it with --model)")
        if args.backend != "auto":
            _usage_error(f"--backend: {args.backend!r}: with --model the backends are the model's own "
                         "(its modules' backend= arguments); leave --backend at auto")
        if args.precision != "fp32" and device.type != "cuda":
            _usage_error(f"--precision: {args.precision} autocast runs on CUDA only (the device is {device})")
        model = _load_cli_model(args, device)
        rf = getattr(model, "receptive_field", None)
        if rf is None:
            rf = getattr(model, "model_file_info", {}).get("receptive_field")
        halo = 0 if rf is None else int(rf) // 2 + 1
        _validate_tile(args, halo, "receptive_field//2 + 1 of the model")
    else:
        if args.precision != "fp32":
            _usage_error(f"--precision: {args.precision} applies to --model only (the DCP runs in float32)")
        from .nn.dehazers import tile_halo
        _validate_tile(args, tile_halo(args.patch, args.radius), "patch//2 + 2*radius + 1")
        _check_backend(args.backend, device)
    _make_output_folder(args.output)
    files, errors = expand_inputs(args.inputs)
    for e in errors:
        print(f"fastdehaze: {e}", file=sys.stderr)
    if outdir_is_input_folder(args.inputs, files, args.output):
        print(f"fastdehaze: warning: the output folder {args.output} is also an input folder: images an "
              "earlier run wrote there are inputs of this run and are dehazed again under new names "
              "(a.png -> a_1.png); this run's own outputs are never read", file=sys.stderr)
    plan = plan_outputs(files, args.output, args.save_transmission)

    def process(path, outs):
        out, tout = outs
        if not args.overwrite:
            for o in (out, tout):
                if o is not None and os.path.exists(o):
                    raise FileExistsError(f"{o}: exists (use --overwrite to replace it)")
        img = read_image(path, max_pixels=args.max_pixels)
        if use_model:
            J, t = model_image(img, model, tile=args.tile, device=device, precision=args.precision), None
        else:
            J, t = dehaze_image(img, patch=args.patch, omega=args.omega, top=args.top, radius=args.radius,
                                eps=args.eps, t0=args.t0, tile=args.tile, device=device, backend=args.backend,
                                save_transmission=args.save_transmission)
        write_atomic(out, J, img.alpha, img.icc_profile if img.bits == 8 else None, args.overwrite)
        if tout is not None:
            write_atomic(tout, t, None, None, args.overwrite)

    return _run_batch(args, files, errors, plan, process)


# ---- models -------------------------------------------------------------------------------------

def _summary(training: dict, limit: int = 6) -> str:
    if not training:
        return "(no training metadata)"
    items = []
    for k, v in list(training.items())[:limit]:
        v = v if isinstance(v, (int, float, bool)) or v is None else str(v)
        v = v if not isinstance(v, str) or len(v) <= 40 else v[:37] + "..."
        items.append(f"{k}={v}")
    return ", ".join(items) + (", ..." if len(training) > limit else "")


def cmd_models(args) -> int:
    from .nn.files import list_models, model_info
    names = list(args.files) or list_models()
    if not names:
        print("fastdehaze: no trained model ships with this version (fastdehaze.nn.list_models() is empty); "
              "dehaze --model also takes a model file written by fastdehaze.nn.save_model")
        return 0
    failed = 0
    for n in names:
        try:
            info = model_info(n)
        except ValueError as e:
            failed += 1
            print(f"fastdehaze: {e}", file=sys.stderr)
            continue
        spec = info["spec"]
        args_s = ", ".join(f"{k}={v['name'] if isinstance(v, dict) and 'name' in v else v}"
                           for k, v in spec["args"].items())
        print(f"{n}\n  size {info['size'] / 1e6:.2f} MB, {info['parameters']:,} parameters; architecture "
              f"{spec['name']}({args_s}); receptive field {info['receptive_field']}, pad multiple "
              f"{info['pad_multiple']}, values {info['value_range']}; fastdehaze {info['fastdehaze_version']}\n"
              f"  training: {_summary(info['training'])}")
    return 1 if failed else 0


# ---- synth --------------------------------------------------------------------------------------

DISPARITY_EPS = 0.05


def depth_from_map(a, kind: str):
    """A depth / disparity map ([H,W] or [H,W,1] array, integer or float) -> float64 [H,W] depth in
    [0, 1] (see ``synth --help``): depth / max(depth); disparity: q = disp / max(disp),
    d = 1 / (q + 0.05), d / max(d)."""
    import numpy as np
    a = np.asarray(a, dtype=np.float64)
    if a.ndim == 3:
        a = a[:, :, 0]
    if not np.isfinite(a).all() or (a < 0).any():
        raise ValueError("the depth map holds negative or non-finite values")
    m = a.max(initial=0.0)
    if kind == "disparity":
        q = a / m if m > 0 else a
        d = 1.0 / (q + DISPARITY_EPS)
        return d / d.max()
    if m <= 0:
        raise ValueError("the depth map is all zeros")
    return a / m


def _read_depth(path, max_pixels):
    import numpy as np
    from .io import ImageReadError, read_image
    if path.lower().endswith(".npy"):
        try:
            a = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as e:
            raise ImageReadError(f"{path}: cannot read the depth array ({e})") from None
        if a.ndim != 2 and not (a.ndim == 3 and a.shape[2] == 1):
            raise ImageReadError(f"{path}: a depth array must be 2-D [H,W], got shape {a.shape}")
        return a
    img = read_image(path, max_pixels=max_pixels)
    px = img.pixels
    if px.shape[2] == 3 and not ((px[:, :, 0] == px[:, :, 1]).all() and (px[:, :, 1] == px[:, :, 2]).all()):
        raise ImageReadError(f"{path}: a colour depth map (a colour-mapped picture?); give a grey map, or .npy")
    return px[:, :, 0]


def _image_seed(seed: int, ident: str) -> int:
    return int.from_bytes(hashlib.sha256(f"{seed}:{ident}".encode()).digest()[:8], "little") & ((1 << 63) - 1)


def _drop_depth_maps(files):
    """Split CLEAR's files into (clear images, depth maps): a file whose stem is "<s>_depth" while
    a file of stem "<s>" is in the same folder among ``files`` is that image's depth map (a folder
    holding both photos and maps, as Depth Anything output: x.jpg with x_depth.png)."""
    stems = {(os.path.dirname(os.path.abspath(p)), os.path.splitext(os.path.basename(p))[0]) for p in files}
    keep, maps = [], []
    for p in files:
        folder, stem = os.path.dirname(os.path.abspath(p)), os.path.splitext(os.path.basename(p))[0]
        if stem.endswith("_depth") and (folder, stem[:-len("_depth")]) in stems:
            maps.append(p)
        else:
            keep.append(p)
    return keep, maps


def cmd_synth(args) -> int:
    import numpy as np
    import torch
    import torch.nn.functional as F
    from .io import IMAGE_EXTENSIONS, ImageReadError, quantize, read_image, to_tensor
    _check_max_pixels(args)
    if args.per_image < 1:
        _usage_error(f"--per-image: must be >= 1, got {args.per_image}")
    device = _resolve_device(args.device)
    if not os.path.isdir(args.depth):
        _usage_error(f"DEPTH: {args.depth!r} is not a folder")
    try:
        from .nn import HazeSynthesis
    except ImportError:
        _usage_error("synth: fastdehaze.nn.HazeSynthesis is not available in this build")
    synth = HazeSynthesis(preset=args.preset)
    files, errors = expand_inputs([args.clear])
    for e in errors:
        print(f"fastdehaze: {e}", file=sys.stderr)
    files, maps = _drop_depth_maps(files)
    if maps:
        print(f"fastdehaze: synth: {len(maps)} file(s) of CLEAR are the depth maps of other images there "
              f"(<stem>_depth.*, e.g. {maps[0]}), not clear images: not hazed", file=sys.stderr)
    exts = IMAGE_EXTENSIONS + (".npy",)
    depth_files = {}
    for n in sorted(os.listdir(args.depth)):
        if n.lower().endswith(exts) and os.path.isfile(os.path.join(args.depth, n)):
            depth_files.setdefault(os.path.splitext(n)[0], []).append(os.path.join(args.depth, n))
    out_clear, out_hazy = os.path.join(args.output, "clear"), os.path.join(args.output, "hazy")
    for d in (args.output, out_clear, out_hazy):
        _make_output_folder(d)
    # ids: stems with "_" -> "-", clashes -> -1, -2, ...
    ids, taken = [], set()
    for p in files:
        base = os.path.splitext(os.path.basename(p))[0].replace("_", "-")
        i, ident = 0, base
        while ident in taken:
            i += 1
            ident = f"{base}-{i}"
        taken.add(ident)
        ids.append(ident)
    csv_path = os.path.join(args.output, "haze.csv")
    rows = []

    def process(path, ident):
        stem = os.path.splitext(os.path.basename(path))[0]
        cands = depth_files.get(stem + "_depth") or depth_files.get(stem, [])
        if not cands:
            raise ImageReadError(f"no depth map {stem}.* or {stem}_depth.* in {args.depth}")
        if len(cands) > 1:
            raise ImageReadError(f"several depth maps match: {', '.join(cands)}")
        outs = [os.path.join(out_clear, ident + ".png")] + [os.path.join(out_hazy, f"{ident}_{k}.png")
                                                             for k in range(1, args.per_image + 1)]
        if not args.overwrite:
            for o in outs:
                if os.path.exists(o):
                    raise FileExistsError(f"{o}: exists (use --overwrite to replace it)")
        img = read_image(path, max_pixels=args.max_pixels)
        try:
            d = depth_from_map(_read_depth(cands[0], args.max_pixels), args.depth_kind)
        except ValueError as e:
            raise ImageReadError(f"{cands[0]}: {_reason(e, cands[0])}") from None
        H, W = img.pixels.shape[:2]
        J = to_tensor(img.pixels).to(device=device, dtype=torch.float32) / img.max_value
        if J.shape[1] == 1:
            J = J.expand(1, 3, H, W).contiguous()
        dt = torch.from_numpy(d).to(device=device, dtype=torch.float32)[None, None]
        if dt.shape[-2:] != (H, W):
            dt = F.interpolate(dt, size=(H, W), mode="bilinear", align_corners=False).clamp_(0, 1)
        g = torch.Generator(device=device).manual_seed(_image_seed(args.seed, ident))
        write_atomic(outs[0], img.pixels if not img.is_gray else img.pixels, None,
                     img.icc_profile if img.bits == 8 else None, args.overwrite)
        new_rows = []
        for k in range(1, args.per_image + 1):
            with torch.no_grad():
                s = synth(J, dt, generator=g)
            px = quantize(s.hazy[0].permute(1, 2, 0).float().cpu(), img.bits).numpy()
            if img.is_gray:
                px = px[:, :, :1]
            write_atomic(outs[k], px, None, None, args.overwrite)
            A = s.A.detach().float().cpu().reshape(-1).tolist()
            A = A * 3 if len(A) == 1 else A
            beta = float(s.beta.detach().float().cpu().reshape(-1)[0])
            new_rows.append((os.path.join("hazy", f"{ident}_{k}.png"), os.path.join("clear", ident + ".png"),
                             *[f"{a:.6f}" for a in A[:3]], f"{beta:.6f}", str(args.seed)))
        rows.extend(new_rows)

    rc = _run_batch(args, files, errors, ids, process, summary_what="clear image(s) hazed and")
    if rows:
        import csv
        import io as _io
        header = ["hazy", "clear", "A_r", "A_g", "A_b", "beta", "seed"]
        merged = {}
        if os.path.exists(csv_path):      # an earlier run into OUT: keep its rows, replace rewritten ones
            try:
                with open(csv_path, newline="") as f:
                    r = csv.reader(f)
                    if next(r, None) == header:
                        merged = {row[0]: tuple(row) for row in r if len(row) == len(header)}
            except OSError:
                pass
        merged.update({row[0]: row for row in rows})
        buf = _io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(header)
        w.writerows(merged[k] for k in sorted(merged))
        tmp = csv_path + ".tmp"
        try:
            with open(tmp, "w") as f:
                f.write(buf.getvalue())
            os.replace(tmp, csv_path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    return rc


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
    if name not in DEMO_IMAGES:
        _usage_error(f"--image: {name!r} is not one of the photos bundled with scikit-image ({', '.join(DEMO_IMAGES)})")
    a = getattr(skimage.data, name)()
    if a.ndim == 2:
        a = a[:, :, None].repeat(3, axis=2)
    return a[:, :, :3]


def _validate_demo_args(args):
    """The demo's numeric flags (usage errors, status 2, naming the flag)."""
    import math
    if not (math.isfinite(args.A) and 0 < args.A <= 1):
        _usage_error(f"--A: the atmospheric light must be in (0, 1], got {args.A}")
    if not (math.isfinite(args.beta) and args.beta > 0):
        _usage_error(f"--beta: the scattering coefficient must be a finite number > 0, got {args.beta}")
    if args.size is not None and args.size < DEMO_MIN_SIZE:
        _usage_error(f"--size: must be >= {DEMO_MIN_SIZE} pixels on the long side (the short side must hold "
                     f"SSIM's 11x11 window), got {args.size}")
    if args.repeat < 1:
        _usage_error(f"--repeat: must be >= 1, got {args.repeat}")


def _timed(fn, x, repeat, device):
    """(fn(x), wall times of ``repeat`` calls), synchronising CUDA around each call."""
    import torch
    times = []
    for _ in range(repeat):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t_start = time.perf_counter()
        y = fn(x)
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t_start)
    return y, times


def cmd_demo(args) -> int:
    import numpy as np
    import torch
    import torch.nn.functional as F
    import fastdehaze
    from .io import quantize
    from .nn.dehazers import DarkChannelDehazer
    _validate_demo_args(args)
    _validate_dcp_args(args)
    device = _resolve_device(args.device)
    if args.backend is not None and args.backends:
        _usage_error("--backend: give --backend BACKEND or --backends LIST, not both")
    if args.backend is not None:
        _check_backend(args.backend, device)
        args.backends = args.backend
    net, net_label = _demo_model(args, device)
    _make_output_folder(args.output)
    clean = torch.from_numpy(_load_sample(args.image)).permute(2, 0, 1).unsqueeze(0).to(torch.float32) / 255
    size = 96 if args.quick and args.size is None else args.size
    if size:
        H, W = clean.shape[-2:]
        s = size / max(H, W)
        clean = F.interpolate(clean, size=(max(1, round(H * s)), max(1, round(W * s))), mode="area").clamp(0, 1)
    if min(clean.shape[-2:]) < 11:
        _usage_error(f"--size: {size} makes the short side of '{args.image}' {min(clean.shape[-2:])} pixels, "
                     "smaller than SSIM's 11x11 window; give a larger --size")
    repeat = 1 if args.quick else args.repeat
    hazy, _ = haze_demo_image(clean, args.A, args.beta)

    def np_img(x):
        return x[0].permute(1, 2, 0).double().cpu().numpy()

    def score(x):  # fastdehaze.metrics: the one PSNR/SSIM of training, eval and quality_dcp.py
        from . import metrics
        return float(metrics.psnr(x.cpu(), clean)[0]), float(metrics.ssim(x.cpu(), clean)[0])

    if args.backends:
        backends = [b.strip() for b in args.backends.split(",") if b.strip()]
        bad = [b for b in backends if b not in ("reference", "cpu", "cuda", "triton")]
        if bad:
            _usage_error(f"--backends: unknown backend {bad[0]!r} (reference, cpu, cuda, triton)")
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
            J, times = _timed(model, x, repeat, device)
        except Exception as e:  # noqa: BLE001  (a backend that fails to compile/run, e.g. Triton's CompilationError)
            failed += 1
            msg = " ".join(str(e).split())
            print(f"  DCP {b:<8} failed: {type(e).__name__}: {msg[:300]}")
            continue
        results[b] = J.cpu()
        p, s = score(results[b])
        ms = min(times) * 1e3
        print(f"  DCP {b:<8} PSNR {p:6.2f} dB  SSIM {s:.4f}  time {ms:9.1f} ms  ({H * W / min(times) / 1e6:7.2f} MP/s)")
    net_out = None
    if net is not None:
        try:
            y, times = _timed(lambda v: _demo_model_forward(net, v), x, repeat, device)
        except Exception as e:  # noqa: BLE001  (as a DCP backend: reported, the others are still shown)
            failed += 1
            msg = " ".join(str(e).split())
            print(f"  {net_label} failed: {type(e).__name__}: {msg[:300]}")
        else:
            net_out = y.cpu()
            p, s = score(net_out)
            ms = min(times) * 1e3
            print(f"  {net_label:<12} PSNR {p:6.2f} dB  SSIM {s:.4f}  time {ms:9.1f} ms  "
                  f"({H * W / min(times) / 1e6:7.2f} MP/s)")
    if not results:
        print("fastdehaze demo: no backend ran", file=sys.stderr)
        return 1
    shown = next(b for b in ("cuda", "cpu", "triton", "reference") if b in results)
    panels, names = [hazy, results[shown]], ["hazy", f"DCP backend {shown}"]
    if net_out is not None:
        panels.append(net_out)
        names.append(net_label)
    side = torch.cat(panels + [clean], dim=3)
    out = os.path.join(args.output, f"demo_{args.image}.png")
    write_atomic(out, quantize(side[0].permute(1, 2, 0).contiguous(), 8).numpy(), overwrite=True)
    print(f"fastdehaze demo: wrote {out} ({' | '.join(names + ['clear'])}); "
          "PSNR/SSIM from fastdehaze.metrics (per image on [0, 1]; SSIM 11x11 Gaussian window, sigma 1.5)")
    return 1 if failed else 0


def _demo_model(args, device):
    """The demo's --model on ``device`` and its label ("model NAME"), or (None, None) for
    --model none or when no model ships (a note is printed). Load errors are usage errors."""
    from .nn.files import list_models
    if args.model is not None and args.model.lower() == "none":
        return None, None
    if args.model is None:
        shipped = list_models()
        if not shipped:
            print("fastdehaze demo: no trained model ships with this version; the PNG has no model panel")
            return None, None
        args.model = DEMO_DEFAULT_MODEL if DEMO_DEFAULT_MODEL in shipped else shipped[0]
    model = _load_cli_model(args, device)
    name = args.model
    if os.path.isfile(name):
        name = os.path.splitext(os.path.basename(name))[0]
    return model, f"model {name}"


def _demo_model_forward(model, x):
    """The model on the float image ``x`` [1,3,H,W] in [0, 1] (float32, inference mode, the
    model's value range): [1,3,H,W] in [0, 1], float32."""
    import torch
    info = getattr(model, "model_file_info", {}) or {}
    lo, hi = info.get("value_range") or getattr(model, "value_range", (0.0, 1.0))
    p = next(iter(model.parameters()), None)
    x = x.to(dtype=p.dtype if p is not None and p.is_floating_point() else torch.float32)
    if (lo, hi) != (0.0, 1.0):
        x = x * (hi - lo) + lo
    if x.device.type == "cuda":
        x = x.contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        y = model(x)
    if isinstance(y, (tuple, list)):
        y = y[0]
    if not isinstance(y, torch.Tensor) or y.dim() != 4 or y.shape[1] != 3 or y.shape[-2:] != x.shape[-2:]:
        raise RuntimeError(f"the model returned {getattr(y, 'shape', type(y).__name__)} for an input of shape "
                           f"{tuple(x.shape)}; expected [1,3,H,W] of the same size")
    y = y.float()
    if (lo, hi) != (0.0, 1.0):
        y = (y - lo) / (hi - lo)
    return y.clamp(0, 1).contiguous()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
