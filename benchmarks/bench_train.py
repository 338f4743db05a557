"""One training step (forward, backward, AdamW step) of ProgressiveDehazer(UNet) with
L1 + IICLLoss (+ the DCMPNet depth loss with a DepthEstimator): fused ops vs eager vs compile.

    nice -n 10 python3 benchmarks/bench_train.py [--size 256] [--batch 2] [--depth] [--rounds 3] [--threads N]

Providers: ``fused`` (every op on the fused CPU/CUDA kernels, backend "auto"); ``eager`` (the
same modules with ``backend="reference"``: fastdehaze.reference's eager PyTorch, written as the
seeds write the losses: one L1 per VGG layer and negative, the depth loss as DCMPNet's
train.py); ``compile`` (torch.compile of the eager step's model and loss). IICLLoss ranks and
cuts its patches with the fused patch ops (patch_brightness_rank, gather_patches) in every
provider: its ranking takes no ``backend`` (under 1 ms of a step). VGG19Features with random
weights (timing only). Peak memory: each provider in its own process
(benchmarks.common.peak_rss_of, CPU); the GPU cases report torch.cuda peak memory through
benchmarks/gpu_check.py (``gpu_cases``, [8,3,256,256]).

Timing (:func:`time_steps`): every provider's step is built and warmed up (two steps) first,
then the rounds interleave the providers (each round runs each once, the starting provider
rotating), so that a change in the machine's load shifts every provider alike rather than
whichever ran during it. Each provider's median wall time and median CPU time (process time,
all threads) are printed. Most of a step is the convolutions of the UNet and of VGG19 (the
IICL features), the same in every provider: the fused ops save what the eager DCP prior,
guided filter, recover and contrastive distance cost (about 0.3 s of 3.5 s at [2,3,256,256],
one thread). On a machine that other jobs load (load average at or above the core count, or
CPU time well below wall time), intra-op threads wait for cores at every parallel region and
the wall times say more about the load than about the providers: the script says so; compare
with ``--threads 1``.
"""
from __future__ import annotations

import argparse
import os
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


PROVIDERS = ("fused", "eager", "compile")


def time_steps(providers, rounds=3, **kw):
    """{provider: {"wall": median s, "wall_min": s, "cpu": median process-CPU s}} of one step.

    All steps are built and warmed up (two steps each: compilation, caches, first-call costs)
    before any is timed; then ``rounds`` rounds, each running every provider once, the first
    provider of round r being ``providers[r % len(providers)]`` (no provider always first)."""
    providers = list(providers)
    bad = [p for p in providers if p not in PROVIDERS]
    if bad or not providers:
        raise ValueError(f"providers (--providers) must be a non-empty subset of {PROVIDERS}, got {bad or providers!r}")
    if rounds < 1:
        raise ValueError(f"rounds (--rounds) must be >= 1, got {rounds}")
    steps = {p: make_step(p, **kw) for p in dict.fromkeys(providers)}
    for p, step in steps.items():
        step()
        step()   # warm-up (compilation, caches)
    wall = {p: [] for p in steps}
    cpu = {p: [] for p in steps}
    order = list(steps)
    for r in range(rounds):
        k = r % len(order)
        for p in order[k:] + order[:k]:
            t, c = time.perf_counter(), time.process_time()
            steps[p]()
            wall[p].append(time.perf_counter() - t)
            cpu[p].append(time.process_time() - c)
    return {p: {"wall": statistics.median(wall[p]), "wall_min": min(wall[p]), "cpu": statistics.median(cpu[p])}
            for p in steps}


def time_step(provider, rounds=3, **kw):
    """Median wall time (s) of one step of ``provider`` timed on its own (see :func:`time_steps`)."""
    return time_steps([provider], rounds, **kw)[provider]["wall"]


def load_note(load: float, threads: int, cores: int, wall: float, cpu: float) -> str:
    """A note when the timings are dominated by other jobs on the machine, else ''."""
    why = []
    if load >= cores:
        why.append(f"load average {load:.1f} on {cores} cores")
    if wall > 0 and threads > 1 and cpu / wall < 0.6 * min(threads, cores):
        why.append(f"CPU/wall {cpu / wall:.2f} with {threads} threads")
    if not why:
        return ""
    return (f"note: the machine is shared ({'; '.join(why)}): intra-op threads wait for cores, so the wall "
            "times reflect the load more than the providers; compare the CPU column, or rerun with --threads 1")


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
    p.add_argument("--providers", default=",".join(PROVIDERS))
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    p.add_argument("--no-memory", action="store_true")
    a = p.parse_args(argv)
    provs = [x.strip() for x in a.providers.split(",") if x.strip()]
    bad = [x for x in provs if x not in PROVIDERS]
    if bad or not provs:
        p.error(f"--providers must be a comma-separated subset of {','.join(PROVIDERS)}, got {a.providers!r}")
    if a.rounds < 1:
        p.error(f"--rounds must be >= 1, got {a.rounds}")
    if a.threads is not None:
        if a.threads < 1:
            p.error(f"--threads must be >= 1, got {a.threads}")
        torch.set_num_threads(a.threads)
    kw = dict(B=a.batch, H=a.size, depth=a.depth)
    threads, cores = torch.get_num_threads(), os.cpu_count() or 1
    load0 = os.getloadavg()[0]
    print(f"training step, ProgressiveDehazer(UNet 16) L1 + IICL{' + depth' if a.depth else ''}, "
          f"[{a.batch},3,{a.size},{a.size}], {threads} threads, load average {load0:.1f} on {cores} cores", flush=True)
    res = time_steps(provs, a.rounds, **kw)
    for prov, r in res.items():
        mem = "" if a.no_memory else f"  peak RSS {peak(prov, **kw) / 2**20:7.1f} MiB"
        print(f"  {prov:<8} {r['wall'] * 1e3:9.1f} ms/step (min {r['wall_min'] * 1e3:9.1f})  "
              f"CPU {r['cpu'] * 1e3:9.1f} ms{mem}", flush=True)
    if "fused" in res:
        for other in res:
            if other != "fused":
                print(f"  fused speed-up over {other}: {res[other]['wall'] / res['fused']['wall']:.2f}x wall, "
                      f"{res[other]['cpu'] / res['fused']['cpu']:.2f}x CPU")
    note = load_note(max(load0, os.getloadavg()[0]), threads, cores, sum(r["wall"] for r in res.values()),
                     sum(r["cpu"] for r in res.values()))
    if note:
        print(note)
    return 0


if __name__ == "__main__":
    sys.exit(main())
