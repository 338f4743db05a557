"""Quality report of DCP dehazing over ../shared/data/pairs (hazy/clear pairs).

    python benchmarks/quality_dcp.py [--backend auto] [--device cpu] [--sets sots_indoor,...]

For each set: the mean PSNR / SSIM of the hazy input and of DCP (fastdehaze.nn.DarkChannelDehazer
with SPEC section 2's defaults: patch 15, omega 0.95, top 0.1%, r 60, eps 1e-3, t0 0.1) against
the ground truth, printed next to the published DCP figures (DehazeFormer's table, over all 500
SOTS images: indoor 16.62 dB / 0.818, outdoor 19.13 dB / 0.815).

Metrics: fastdehaze.metrics (torchmetrics; the one definition used by training validation,
``fastdehaze eval`` and the demo): PSNR per image on the output clamped to [0, 1], SSIM with the
11x11 Gaussian window (sigma 1.5) at full resolution, against the ground truth / 255, in
float64, averaged over images. (Until Dec 2026 this script used skimage's SSIM with its default
7x7 uniform window, which gives other SSIM numbers.) Pairs: the same file stem in
hazy/ and gt/; in sots_indoor_orig the 640x480 ground truth is cropped 10 px per side to
meet the 620x460 hazy image. Reference point: on the 14 shared SOTS-indoor pairs an eager
PyTorch DCP with the same defaults gives a mean PSNR of 19.08 dB (hazy input 12.73 dB).
"""
from __future__ import annotations

import argparse
import os
import pathlib
import sys
import time

import numpy as np
import torch

ROOT = pathlib.Path(__file__).resolve().parents[1]
DEFAULT_DATA = pathlib.Path(os.environ.get("FASTDEHAZE_DATA") or ROOT.parent / "shared" / "data")

PUBLISHED = {"sots_indoor": (16.62, 0.818), "sots_indoor_orig": (16.62, 0.818), "sots_outdoor": (19.13, 0.815)}
EAGER_14 = {"sots_indoor": (19.08, 12.73)}   # eager PyTorch DCP / hazy input, mean PSNR on the 14 shared pairs
SETS = ("sots_indoor", "sots_indoor_orig", "sots_outdoor", "ohaze", "xjtu_videohazy")


def pairs(set_dir: pathlib.Path):
    gt = {p.stem: p for p in (set_dir / "gt").iterdir() if p.is_file()}
    for h in sorted((set_dir / "hazy").iterdir()):
        if h.stem in gt:
            yield h, gt[h.stem]
        else:   # SOTS-indoor originals: hazy 1400_2.png -> gt 1400.png
            base = h.stem.split("_")[0]
            if base in gt:
                yield h, gt[base]


def align(hazy: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """Crop the ground truth to the hazy image's size, evenly from each side (SOTS: 10 px)."""
    dh, dw = gt.shape[0] - hazy.shape[0], gt.shape[1] - hazy.shape[1]
    if dh < 0 or dw < 0 or dh % 2 or dw % 2:
        raise ValueError(f"cannot align gt {gt.shape} to hazy {hazy.shape}")
    return gt[dh // 2: gt.shape[0] - dh // 2, dw // 2: gt.shape[1] - dw // 2]


def run(data: pathlib.Path, sets, backend: str, device: str, limit: int | None = None, log=print):
    from fastdehaze import metrics

    def _t(a):
        return torch.from_numpy(np.ascontiguousarray(a)).permute(2, 0, 1)[None]

    def psnr(gt, x, data_range=1.0):
        return float(metrics.psnr(_t(x), _t(gt))[0])

    def ssim(gt, x, data_range=1.0, channel_axis=2):
        return float(metrics.ssim(_t(x), _t(gt))[0])

    from fastdehaze.io import read_image
    from fastdehaze.nn import DarkChannelDehazer

    model = DarkChannelDehazer(backend=backend, tile=2048)
    report = {}
    for name in sets:
        d = data / "pairs" / name
        if not d.is_dir():
            log(f"{name}: not found under {data / 'pairs'}")
            continue
        rows, secs, pixels = [], 0.0, 0
        for i, (hp, gp) in enumerate(pairs(d)):
            if limit is not None and i >= limit:
                break
            hazy = read_image(hp).pixels
            gt = read_image(gp).pixels
            if hazy.shape[2] == 1:
                hazy = np.repeat(hazy, 3, axis=2)
            gt = align(hazy, gt).astype(np.float64) / 255
            h = hazy.astype(np.float64) / 255
            x = torch.from_numpy(h).permute(2, 0, 1).unsqueeze(0).to(torch.float32).to(device)
            t = time.perf_counter()
            J = model(x)
            if J.device.type == "cuda":
                torch.cuda.synchronize()
            secs += time.perf_counter() - t
            pixels += h.shape[0] * h.shape[1]
            j = J[0].permute(1, 2, 0).double().cpu().numpy().clip(0, 1)
            rows.append((psnr(gt, h, data_range=1.0), ssim(gt, h, data_range=1.0, channel_axis=2),
                         psnr(gt, j, data_range=1.0), ssim(gt, j, data_range=1.0, channel_axis=2)))
        if rows:
            report[name] = (len(rows), *np.mean(np.array(rows), axis=0), pixels / secs / 1e6)
    return report


def format_report(report) -> str:
    lines = [f"{'set':<18}{'n':>3}  {'hazy PSNR/SSIM':>16}  {'DCP PSNR/SSIM':>16}  {'published DCP':>15}  {'MP/s':>6}"]
    for name, (n, hp, hs, dp, ds, mps) in report.items():
        pub = PUBLISHED.get(name)
        pub_s = f"{pub[0]:.2f}/{pub[1]:.3f}" if pub else "-"
        lines.append(f"{name:<18}{n:>3}  {hp:>8.2f}/{hs:.3f}  {dp:>9.2f}/{ds:.3f}  {pub_s:>15}  {mps:>6.2f}")
        if name in EAGER_14 and n == 14:
            e, eh = EAGER_14[name]
            lines.append(f"{'':<21}eager PyTorch DCP on these 14 pairs: {e:.2f} dB (hazy {eh:.2f}); "
                         f"ours {dp:.2f} dB, difference {dp - e:+.2f} dB")
    lines.append("published figures: DehazeFormer's table, over all 500 SOTS images (not these subsets)")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=pathlib.Path, default=DEFAULT_DATA, help="the shared data folder")
    p.add_argument("--sets", default=",".join(SETS), help="comma list of sets under data/pairs")
    p.add_argument("--backend", default="auto")
    p.add_argument("--device", default="cpu")
    p.add_argument("--limit", type=int, default=None, help="at most this many pairs per set")
    a = p.parse_args(argv)
    if not a.data.is_dir():
        print(f"quality_dcp: data folder {a.data} not found (set --data or FASTDEHAZE_DATA)", file=sys.stderr)
        return 2
    report = run(a.data, [s for s in a.sets.split(",") if s], a.backend, a.device, a.limit)
    print(f"DCP quality (backend {a.backend}, device {a.device}; PSNR/SSIM: fastdehaze.metrics)")
    print(format_report(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
