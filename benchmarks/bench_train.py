"""One training step (forward, backward, AdamW step) of ProgressiveDehazer(UNet) with
L1 + IICLLoss (+ the DCMPNet depth loss with a DepthEstimator): fused ops vs eager vs compile.

    nice -n 10 python3 benchmarks/bench_train.py [--size 256] [--batch 2] [--depth] [--rounds 3]

Providers: ``fused`` (every op on the fused CPU/CUDA kernels, backend "auto"); ``eager`` (the
same modules with ``backend="reference"``: fastdehaze.reference's eager PyTorch, written as the
seeds write the losses: one L1 per VGG layer and negative, unfold-based patch ranking, the
depth loss as DCMPNet's train.py); ``compile`` (torch.compile of the eager step's model and
loss). VGG19Features with random weights (timing only). Peak memory: each provider in its own
process (benchmarks.common.peak_rss_of, CPU); the GPU cases report torch.cuda peak memory
through benchmarks/gpu_check.py (``gpu_cases``, [8,3,256,256]).
"""
from __future__ import annotations

import argparse
import pathlib
import statistics
import sys
import time
import warnings

import torch
import torch.nn.functional as F

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))


def make_step(provider: str, B=2, H=256, depth=False, device="cpu", small_unet=False):
    """A zero-argument callable running one training step (and the batch it uses)."""
    from fastdehaze.nn import IICLLoss, ProgressiveDehazer, VGG19Features
    backend = "reference" if provider in ("eager", "compile") else "auto"
    torch.manual_seed(0)
    model = ProgressiveDehazer({"name": "UNet", "args": {"width": 8 if small_unet else 16}},
                               {"name": "PreRestoreModule", "args": {"backend": backend}}).to(device)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        vgg = VGG19Features(None).to(device)
    iicl = IICLLoss(patch=64, stride=64, k=2, vgg=vgg, backend=backend)
    params = list(model.parameters())
    dnet = dcmp = None
    if depth:
        from fastdehaze.nn import DCMPNetLoss, DepthEstimator
        dnet = DepthEstimator().to(device)
        dcmp = DCMPNetLoss(contrast_weight=0.0, backend=backend)
        params += list(dnet.parameters())
    opt = torch.optim.AdamW(params, lr=1e-4)
    g = torch.Generator().manual_seed(1)
    clear = torch.rand(B, 3, H, H, generator=g).to(device)
    hazy = (clear * 0.6 + 0.35).clamp(0, 1)
    dtarget = torch.rand(B, 1, H, H, generator=g).to(device)

    def loss_fn(hazy, clear):
        J, J0 = model(hazy, return_j0=True)
        loss = F.l1_loss(J, clear) + 0.1 * iicl(J, clear, hazy)
        if depth:
            parts = dcmp(J, clear, hazy, dnet(J), dtarget)
            loss = loss + parts.dehaze + parts.depth
        return loss

    fn = torch.compile(loss_fn) if provider == "compile" else loss_fn

    def step():
        loss = fn(hazy, clear)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if device != "cpu":
            torch.cuda.synchronize()
        return loss
    return step


def time_step(provider, rounds=3, **kw):
    step = make_step(provider, **kw)
    step()
    step()   # warm-up (compilation, caches)
    ts = []
    for _ in range(rounds):
        t = time.perf_counter()
        step()
        ts.append(time.perf_counter() - t)
    return statistics.median(ts)


def peak(provider, **kw):
    from benchmarks.common import peak_rss_of
    args = ", ".join(f"{k}={v!r}" for k, v in kw.items())
    return peak_rss_of(f"import sys; sys.path.insert(0, {str(pathlib.Path(__file__).resolve().parents[1])!r})\n"
                       f"from benchmarks.bench_train import make_step\ns = make_step({provider!r}, {args})\ns(); s()")


def gpu_cases(device, small=False):
    """Training-step cases for benchmarks/gpu_check.py: [8,3,256,256] (small: [1,3,64,64]), fused
    vs eager (reference ops) vs compile, L1 + IICL + depth loss."""
    from benchmarks.common import Case
    B, H = (1, 64) if small else (8, 256)
    steps = {p: None for p in ("fused", "eager", "compile")}

    def lazy(p):
        def run():
            if steps[p] is None:
                steps[p] = make_step(p, B=B, H=H, depth=True, device=device)
            return steps[p]()
        return run
    prov = {"cuda" if torch.device(device).type == "cuda" else "cpu": lazy("fused"), "eager": lazy("eager"),
            "compile": lazy("compile")}
    return [Case(name=f"train step PRM+UNet L1+IICL+depth [{B},3,{H},{H}]", bytes=0, providers=prov)]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--depth", action="store_true", help="add the DepthEstimator + DCMPNet depth loss")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--providers", default="fused,eager,compile")
    p.add_argument("--no-memory", action="store_true")
    a = p.parse_args(argv)
    kw = dict(B=a.batch, H=a.size, depth=a.depth)
    print(f"training step, ProgressiveDehazer(UNet 16) L1 + IICL{' + depth' if a.depth else ''}, "
          f"[{a.batch},3,{a.size},{a.size}], {torch.get_num_threads()} threads")
    for prov in a.providers.split(","):
        t = time_step(prov, a.rounds, **kw)
        mem = "" if a.no_memory else f"  peak RSS {peak(prov, **kw) / 2**20:7.1f} MiB"
        print(f"  {prov:<8} {t * 1e3:9.1f} ms/step{mem}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
