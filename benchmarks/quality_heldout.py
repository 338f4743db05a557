"""Held-out-scene quality of models trained by ``fastdehaze train`` with ``data.train_exclude``.

    python3 benchmarks/quality_heldout.py RUN_DIR [RUN_DIR ...] [--data ../shared/data/train/sots_indoor]
        [--out benchmarks/results/heldout_prm_dcp_sots_indoor.json]

For each run folder: its last checkpoint's raw weights (the model ``export`` writes), evaluated on
the scenes its config left out of training (``data.train_exclude``), every haze level of each, at
full resolution, against the fused DCP (``fastdehaze.ops.dehaze_dcp``, SPEC defaults) and the
hazy input. Per scene and per run: mean per-image PSNR / SSIM (``fastdehaze.metrics``: PSNR on
the output clamped to [0, 1], SSIM with the 11x11 Gaussian window), in float32 (no 8-bit
rounding). A run that excluded no scene is refused (its numbers would be training numbers).
"""
from __future__ import annotations

import argparse
import json
import pathlib
import sys

import torch

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def evaluate_run(run_dir: pathlib.Path, data: pathlib.Path) -> dict:
    from fastdehaze import metrics, ops
    from fastdehaze.nn import build_model
    from fastdehaze.train.checkpoint import latest_checkpoint, load_checkpoint, strip_prefixes
    from fastdehaze.train.data import find_pairs, load_rgb, select_scenes
    ck = latest_checkpoint(run_dir / "checkpoints")
    if ck is None:
        raise SystemExit(f"{run_dir}: no checkpoint in {run_dir / 'checkpoints'}")
    st = load_checkpoint(ck)
    held = list(st["config"]["data"]["train_exclude"])
    if not held:
        raise SystemExit(f"{run_dir}: its config leaves no scene out of training (data.train_exclude = [])")
    model = build_model(st["spec"])
    model.load_state_dict(strip_prefixes(st["model"]))
    model.eval()
    rows = {}
    with torch.no_grad():
        for hazy_p, clear_p in select_scenes(find_pairs(data), include=held, what="held-out scenes"):
            I, J = load_rgb(hazy_p)[None], load_rgb(clear_p)[None]
            outs = {"hazy": I, "dcp": ops.dehaze_dcp(I).clamp(0, 1), "model": model(I).float().clamp(0, 1)}
            scene = pathlib.Path(clear_p).stem
            for k, x in outs.items():
                r = rows.setdefault(scene, {}).setdefault(k, {"psnr": [], "ssim": []})
                r["psnr"].append(float(metrics.psnr(x, J)[0]))
                r["ssim"].append(float(metrics.ssim(x, J)[0]))

    def mean(v):
        return sum(v) / len(v)
    per_scene = {s: {k: {m: mean(v) for m, v in d.items()} for k, d in r.items()} for s, r in sorted(rows.items())}
    allv = {k: {m: mean([x for r in rows.values() for x in r[k][m]]) for m in ("psnr", "ssim")}
            for k in ("hazy", "dcp", "model")}
    return {"run": str(run_dir), "checkpoint": str(ck), "step": int(st["step"]), "held_out": held,
            "images": sum(len(r["hazy"]["psnr"]) for r in rows.values()), "mean": allv, "per_scene": per_scene}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="+", type=pathlib.Path)
    ap.add_argument("--data", type=pathlib.Path, default=ROOT.parent / "shared" / "data" / "train" / "sots_indoor")
    ap.add_argument("--out", type=pathlib.Path, default=None)
    a = ap.parse_args(argv)
    torch.set_num_threads(2)
    res = [evaluate_run(r, a.data) for r in a.runs]
    for r in res:
        m = r["mean"]
        print(f"{r['run']}: scenes {', '.join(r['held_out'])} ({r['images']} images): hazy {m['hazy']['psnr']:.2f} "
              f"DCP {m['dcp']['psnr']:.2f} / {m['dcp']['ssim']:.4f} model {m['model']['psnr']:.2f} / "
              f"{m['model']['ssim']:.4f} (model - DCP {m['model']['psnr'] - m['dcp']['psnr']:+.2f} dB)")
        for s, v in r["per_scene"].items():
            print(f"    {s}: hazy {v['hazy']['psnr']:.2f} DCP {v['dcp']['psnr']:.2f} model {v['model']['psnr']:.2f}")
    if len(res) > 1:
        d = [r["mean"]["model"]["psnr"] - r["mean"]["dcp"]["psnr"] for r in res]
        print(f"mean over {len(res)} runs of (model - DCP): {sum(d) / len(d):+.2f} dB (min {min(d):+.2f}, max {max(d):+.2f})")
    if a.out:
        a.out.parent.mkdir(parents=True, exist_ok=True)
        a.out.write_text(json.dumps(res, indent=1))
        print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
