"""``python3 -m fastdehaze train | export | eval`` (added to fastdehaze.cli by :func:`add_commands`)."""
from __future__ import annotations

import csv
import pathlib
import sys

__all__ = ["add_commands", "run_command", "COMMANDS"]

COMMANDS = ("train", "export", "eval")


def add_commands(sub):
    t = sub.add_parser("train", help="train a dehazing network (TOML config; torchrun for several GPUs)",
                       description="Train a ProgressiveDehazer. Every key: --print-config. Under torchrun "
                                   "(--nproc_per_node N) the ranks train with DDP.")
    t.add_argument("--config", default=None, help="TOML config file")
    t.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override one key (repeatable), e.g. --set optim.lr=1e-3")
    t.add_argument("--resume", default=None, metavar="CKPT",
                   help="continue from this checkpoint (default: the run folder's latest, run.auto_resume)")
    t.add_argument("--print-config", action="store_true",
                   help="print the resolved config with every key's documentation and exit")

    e = sub.add_parser("export", help="write a model file (.safetensors) from a training checkpoint")
    e.add_argument("checkpoint", help="a checkpoint .pt of fastdehaze train")
    e.add_argument("output", help="the model file to write (.safetensors)")
    e.add_argument("--weights", choices=("ema", "raw"), default="ema",
                   help="the EMA weights when the run kept them (default), or the raw weights")
    e.add_argument("--trust-code", action="store_true", help="allow a user's module:Class base")
    e.add_argument("--overwrite", action="store_true", help="replace OUTPUT if it exists (default: refuse)")

    v = sub.add_parser("eval", help="PSNR / SSIM / CIEDE2000 of a folder of results against the clear images")
    v.add_argument("outputs", help="folder of results (dehazed images)")
    v.add_argument("clear", help="folder of ground-truth images (matched by stem, or by the stem's part "
                                 "before '_' as in RESIDE: 1400_3.png -> 1400.png)")
    v.add_argument("-o", "--output", default=None, help="write per-image rows and the mean to this CSV")


def run_command(args) -> int:
    from .config import ConfigError
    try:
        if args.command == "train":
            return cmd_train(args)
        if args.command == "export":
            return cmd_export(args)
        return cmd_eval(args)
    except ConfigError as e:
        print(f"fastdehaze {args.command}: {e}", file=sys.stderr)
        return 2
    except (ValueError, FileNotFoundError, NotADirectoryError, PermissionError) as e:
        # argument and file problems found after parsing (run.device=cuda without CUDA, a missing
        # --resume file, an output folder that does not exist): one line, exit 2, no traceback
        print(f"fastdehaze {args.command}: error: {e}", file=sys.stderr)
        return 2


def cmd_train(args) -> int:
    from .config import format_config, load_config
    cfg = load_config(args.config, args.overrides)
    if args.print_config:
        print(format_config(cfg))
        return 0
    from .loop import train
    train(cfg, resume=args.resume)
    return 0


def cmd_export(args) -> int:
    from fastdehaze.nn import build_model, save_model
    from .checkpoint import load_checkpoint, strip_prefixes
    import os
    if os.path.lexists(args.output) and not args.overwrite:
        print(f"fastdehaze export: {args.output}: exists (use --overwrite to replace it)", file=sys.stderr)
        return 2
    try:
        st = load_checkpoint(args.checkpoint)
        model = build_model(st["spec"], trust_code=args.trust_code)
    except ValueError as e:
        print(f"fastdehaze export: {e}", file=sys.stderr)
        return 2
    weights = st["model"]
    used = "raw"
    if args.weights == "ema" and st.get("ema") is not None:
        weights = {k: v for k, v in st["ema"].items() if k != "n_averaged"}
        used = "ema"
    model.load_state_dict(strip_prefixes(weights))
    cfg = st.get("config", {})
    best = st.get("best_psnr")
    meta = {"step": st["step"], "weights": used,
            "best_val_psnr": best if best is not None and abs(best) != float("inf") else None,
            "losses": cfg.get("loss"), "data": cfg.get("data", {}).get("train"), "checkpoint": str(args.checkpoint)}
    save_model(model, args.output, metadata=meta)
    print(f"wrote {args.output} ({used} weights of step {st['step']})")
    return 0


def _match(outputs: pathlib.Path, clear: pathlib.Path):
    from fastdehaze.io import IMAGE_EXTENSIONS

    def files(d):
        return sorted(p for p in d.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
    gt = {p.stem: p for p in files(clear)}
    for o in files(outputs):
        g = gt.get(o.stem) or gt.get(o.stem.split("_")[0])
        yield o, g


def cmd_eval(args) -> int:
    import torch
    from fastdehaze import metrics
    from fastdehaze.train.data import _center_crop, load_rgb
    out_dir, gt_dir = pathlib.Path(args.outputs), pathlib.Path(args.clear)
    for name, d in (("OUTPUTS", out_dir), ("CLEAR", gt_dir)):
        if not d.is_dir():
            print(f"fastdehaze eval: {name} {d} is not a folder", file=sys.stderr)
            return 2
    de = metrics.ciede2000_available()
    if not de:
        print("fastdehaze eval: scikit-image is not installed: no CIEDE2000 column "
              "(pip install scikit-image)", file=sys.stderr)
    rows, errors = [], 0
    for o, g in _match(out_dir, gt_dir):
        if g is None:
            print(f"{o}: no clear image of the same stem in {gt_dir}", file=sys.stderr)
            errors += 1
            continue
        try:
            x, y = load_rgb(o), load_rgb(g)
            if y.shape != x.shape:
                y = _center_crop(y, x.shape[-2:], g)
        except ValueError as e:
            print(f"{o}: {' '.join(str(e).split())}", file=sys.stderr)
            errors += 1
            continue
        x, y = x[None], y[None]
        r = {"image": o.name, "clear": g.name, "psnr": float(metrics.psnr(x, y)[0]),
             "ssim": float(metrics.ssim(x, y)[0])}
        if de:
            r["ciede2000"] = float(metrics.ciede2000(x, y)[0])
        rows.append(r)
        print(f"{o.name:<32} PSNR {r['psnr']:6.2f} dB  SSIM {r['ssim']:.4f}"
              + (f"  CIEDE2000 {r['ciede2000']:.3f}" if de else ""))
    if not rows:
        print(f"fastdehaze eval: no result in {out_dir} matched a clear image", file=sys.stderr)
        return 1
    keys = [k for k in ("psnr", "ssim", "ciede2000") if k in rows[0]]
    mean = {k: sum(r[k] for r in rows) / len(rows) for k in keys}
    print(f"mean over {len(rows)} image(s): " + "  ".join(f"{k.upper()} {v:.4f}" for k, v in mean.items()))
    if args.output:
        with open(args.output, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=["image", "clear"] + keys)
            w.writeheader()
            w.writerows(rows)
            w.writerow({"image": "mean", "clear": len(rows), **mean})
    return 1 if errors else 0
