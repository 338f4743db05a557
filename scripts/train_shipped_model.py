"""Train the first shipped model: ``ProgressiveDehazer(UNet(width=4, levels=1), PreRestoreModule())``.

Design (ours; only the ICASSP 2023 abstract of the progressive framework is public): the PRM starts
from the fused dark channel prior (J0 == dehaze_dcp at step 0) and learns a low-capacity
correction of its transmission (t = t_dcp ** exp(delta + g), delta from a 4-layer, 16-channel net
at 1/4 resolution, g and an A correction from a global 11-statistic MLP); a tiny residual U-Net
(width 4, one level, output layer zeroed, so J == J0 at step 0) refines J0. 7,888 parameters.

Data: ../shared/data/train/sots_indoor (RESIDE ITS layout, 20 scenes x 10 haze levels). The first
15 scenes (sorted) train, the last 5 (all 10 levels) are held out to estimate the unseen-scene
margin; ../shared/data/pairs/sots_indoor is reported too (optimistic: same rooms as training).
Full 620x460 images (so the DCP prior and its global A are those of inference), batch 2, random
horizontal flips, Adam lr 2e-3, loss L1(J, clear) + 0.5 L1(J0, clear); no contrastive term (no
VGG19 weights exist here). CPU, torch.set_num_threads(2).

    nice -n 10 python3 scripts/train_shipped_model.py --seconds 480 \\
        --out fastdehaze/models/prm_dcp_sots_indoor.safetensors
"""
import argparse
import glob
import json
import os
import time

import numpy as np
import torch
from PIL import Image

from fastdehaze import ops
from fastdehaze.nn import PreRestoreModule, ProgressiveDehazer, UNet
from fastdehaze.nn.files import save_model

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load(p):
    return torch.from_numpy(np.asarray(Image.open(p).convert("RGB"), dtype=np.float32) / 255.).permute(2, 0, 1)[None]


def psnr(a, b):
    return float(-10 * torch.log10(((a.clamp(0, 1) - b) ** 2).mean()))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=os.path.join(HERE, "..", "shared", "data"))
    ap.add_argument("--seconds", type=float, default=480, help="training wall-time budget")
    ap.add_argument("--holdout", type=int, default=5, help="last N scenes held out for validation")
    ap.add_argument("--init", default=None, help="a model file to continue from (fresh Adam state)")
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    torch.set_num_threads(2)
    torch.manual_seed(0)
    D = a.data
    scenes = sorted(os.path.basename(p)[:-4] for p in glob.glob(f"{D}/train/sots_indoor/clear/*.png"))
    TR, VAL = scenes[:len(scenes) - a.holdout], scenes[len(scenes) - a.holdout:]

    def pairs(ss):
        return [(load(h), load(f"{D}/train/sots_indoor/clear/{s}.png")) for s in ss
                for h in sorted(glob.glob(f"{D}/train/sots_indoor/hazy/{s}_*.png"))]

    tr, va = pairs(TR), pairs(VAL)
    pp = [(load(h), load(h.replace("/hazy/", "/gt/"))) for h in sorted(glob.glob(f"{D}/pairs/sots_indoor/hazy/*.png"))]
    base = UNet(width=4, levels=1, blocks=1)
    with torch.no_grad():
        base.net.outc.weight.zero_()
    m = ProgressiveDehazer(base, PreRestoreModule())
    if a.init:
        from fastdehaze.nn.files import load_model
        m.load_state_dict(load_model(a.init).state_dict())
    opt = torch.optim.Adam(m.parameters(), lr=2e-3)
    g = torch.Generator().manual_seed(0)
    t_start, step = time.time(), 0
    while time.time() - t_start < a.seconds:
        idx = torch.randint(len(tr), (2,), generator=g)
        I = torch.cat([tr[i][0] for i in idx])
        J = torch.cat([tr[i][1] for i in idx])
        if torch.rand(1, generator=g) < 0.5:
            I, J = I.flip(-1), J.flip(-1)
        out = m(I, return_j0=True)
        loss = (out.J - J).abs().mean() + 0.5 * (out.J0 - J).abs().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        step += 1
        if step % 50 == 0:
            print(step, round(time.time() - t_start), float(loss.detach()), flush=True)
    train_s = time.time() - t_start
    m.eval()

    def ev(data):
        with torch.no_grad():
            return np.array([(psnr(I, J), psnr(ops.dehaze_dcp(I), J), psnr(m(I), J)) for I, J in data]).mean(0).tolist()

    res = {"steps": step, "train_seconds": round(train_s), "train_scenes": TR, "holdout_scenes": VAL,
           "psnr_holdout_hazy_dcp_model": ev(va), "psnr_pairs_hazy_dcp_model": ev(pp),
           "loss": "L1(J) + 0.5 L1(J0)", "data": "RESIDE SOTS-indoor (research use), via a GPL-3.0 repository"}
    print(json.dumps(res))
    save_model(m, a.out, metadata={"training": res})


if __name__ == "__main__":
    main()
