"""The training loop of ``python3 -m fastdehaze train`` (read it top to bottom: :func:`train`).

One process or torchrun's ranks (see :mod:`fastdehaze.train.distributed`), a
:class:`~fastdehaze.nn.ProgressiveDehazer` around a built-in or user base network, the losses of
:mod:`fastdehaze.train.losses`, Adam/AdamW with warm-up + cosine, gradient clipping, AMP on
CUDA, optional EMA / channels_last / torch.compile, validation at full resolution with
:mod:`fastdehaze.metrics`, atomic checkpoints (:mod:`fastdehaze.train.checkpoint`) and exact
resume. SIGINT / SIGTERM: the step in progress finishes, a checkpoint is written, the job exits
with status 0 (the ranks agree on the stop step through an all-reduced flag).

Steps and epochs: a step is one optimiser step on one global batch; an epoch is
``len(dataset) // batch_size`` steps (the last partial batch is dropped; every rank shards the
epoch's permutation with a DistributedSampler). The checkpoint's ``step`` is thus also the
position in the data: resuming at step s starts epoch s // steps_per_epoch at batch
s % steps_per_epoch, skipping the consumed indices without loading them.
"""
from __future__ import annotations

import inspect
import math
import os
import pathlib
import signal
import sys
import time
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from .. import metrics
from . import checkpoint as ckpt
from . import distributed as dist_
from .config import Config, ConfigError, config_to_dict, format_config
from .data import (PairsDataset, SkipSampler, TrainDataset, collate, find_clear_depth, find_pairs, select_scenes,
                   worker_init)
from .logs import MetricsLog, write_sample
from .losses import build_losses, build_teacher, compute_loss

__all__ = ["train", "build_model_from_config", "Joint"]


class Joint(nn.Module):
    """The trained modules under one DDP wrapper: the dehazer and (depth mode) the depth network
    run on the dehazed output. forward(hazy) -> (J, J0, depth of J or None)."""

    def __init__(self, model, depth_net=None):
        super().__init__()
        self.model, self.depth_net = model, depth_net

    def forward(self, hazy):
        J, J0 = self.model(hazy, return_j0=True)
        D = self.depth_net(J) if self.depth_net is not None else None
        return J, J0, D


def _with_backend(name, args, backend):
    import fastdehaze.nn as fnn
    cls = getattr(fnn, "ARCHITECTURES", {}).get(name)
    if cls is not None and "backend" in inspect.signature(cls).parameters and "backend" not in args:
        return {**args, "backend": backend}
    return dict(args)


def build_model_from_config(cfg: Config) -> nn.Module:
    """The ProgressiveDehazer the config names (a "module:Class" base is imported: you named it)."""
    from fastdehaze.nn import ProgressiveDehazer
    m = cfg.model
    base = {"name": m.base, "args": _with_backend(m.base, m.base_args, m.backend)}
    prm = {"name": "PreRestoreModule", "args": _with_backend("PreRestoreModule", m.prm_args, m.backend)}
    try:
        return ProgressiveDehazer(base, prm, base_input=m.base_input, trust_code=True)
    except (TypeError, ValueError, ImportError, AttributeError) as e:
        raise ConfigError(f"model.base / model.base_args / model.prm_args: cannot build the model ({e})") from None


def _lr_lambda(cfg: Config):
    o, total = cfg.optim, cfg.run.steps

    def f(step):
        if o.warmup_steps and step < o.warmup_steps:
            return (step + 1) / o.warmup_steps
        span = max(1, total - o.warmup_steps)
        p = min(1.0, (step - o.warmup_steps) / span)
        return o.min_lr_ratio + (1 - o.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * p))
    return f


class _Stop:
    """SIGINT/SIGTERM set a flag (the step finishes, a checkpoint is written, exit 0)."""

    def __init__(self):
        self.flag, self.signum, self.old = False, None, {}

    def __enter__(self):
        for s in (signal.SIGINT, signal.SIGTERM):
            try:
                self.old[s] = signal.signal(s, self._handler)
            except ValueError:   # not the main thread
                pass
        return self

    def _handler(self, signum, frame):
        self.flag, self.signum = True, signum

    def __exit__(self, *a):
        for s, h in self.old.items():
            signal.signal(s, h)


class _Progress:
    """tqdm on a terminal (rank 0); plain lines every ``log_every`` steps otherwise."""

    def __init__(self, total, initial, enabled, log_every):
        self.tty = enabled and sys.stderr.isatty()
        self.enabled, self.total, self.log_every = enabled, total, log_every
        self.t0, self.s0 = time.perf_counter(), initial
        self.bar = None
        if self.tty:
            from tqdm import tqdm
            self.bar = tqdm(total=total, initial=initial, unit="step", dynamic_ncols=True)

    def update(self, step, loss, lr):
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2e}")
        elif step % self.log_every == 0 or step == self.total:
            el = time.perf_counter() - self.t0
            rate = (step - self.s0) / el if el > 0 else 0.0
            eta = (self.total - step) / rate if rate > 0 else 0.0
            print(f"step {step}/{self.total} loss {loss:.4f} lr {lr:.2e} {rate:.2f} it/s "
                  f"ETA {time.strftime('%H:%M:%S', time.gmtime(eta))}", flush=True)

    def write(self, msg):
        if self.bar is not None:
            self.bar.write(msg)
        else:
            print(msg, flush=True)

    def close(self):
        if self.bar is not None:
            self.bar.close()


@torch.no_grad()
def validate(model, loader, device, cfg: Config, run_dir, step, autocast):
    """Mean per-image PSNR / SSIM over the pairs at full resolution (and the sample PNGs)."""
    was = model.training
    model.eval()
    ps, ss = [], []
    for i, b in enumerate(loader):
        if b["n"] == 0:
            continue
        hazy, clear = b["hazy"].to(device), b["clear"].to(device)
        with autocast():
            J = model(hazy)
        J = J.float().clamp(0, 1)
        ps.append(metrics.psnr(J, clear))
        ss.append(metrics.ssim(J, clear))
        if i < cfg.run.samples:
            write_sample(pathlib.Path(run_dir) / "samples" / f"step{step:07d}_{b['name'][0]}.png", hazy[0], J[0],
                         clear[0])
    model.train(was)
    if not ps:
        return float("nan"), float("nan")
    return float(torch.cat(ps).mean()), float(torch.cat(ss).mean())


def train(cfg: Config, resume: Optional[str] = None) -> dict:
    """Run (or continue) the job the config describes. Returns a summary dict
    (``step``, ``stopped`` (interrupted), ``best_psnr``, ``last_loss``, ``checkpoint``, ``corrupt``,
    ``model`` (the trained module), ``ema``, ``seen`` (the sample indices this rank trained on),
    ``rank``, ``world_size``)."""
    info = dist_.setup(cfg.run.device, cfg.run.pg_timeout_s)
    try:
        return _train(cfg, resume, info)
    finally:
        dist_.teardown(info)


def _train(cfg: Config, resume, info: dist_.DistInfo) -> dict:
    R, dev, master = cfg.run, info.device, info.master
    if R.threads:
        torch.set_num_threads(R.threads)
    if R.batch_size % info.world_size:
        raise ConfigError(f"run.batch_size: the global batch {R.batch_size} must be divisible by the "
                          f"{info.world_size} ranks")
    if cfg.optim.amp != "none" and dev.type != "cuda":
        raise ConfigError(f"optim.amp: {cfg.optim.amp!r} needs a CUDA device (run.device is {dev.type}); "
                          "use 'none' on the CPU")
    local_b = R.batch_size // info.world_size
    run_dir = pathlib.Path(R.dir)
    ck_dir = run_dir / "checkpoints"

    # ---- data ----
    if not cfg.data.train:
        raise ConfigError("data.train: no training folder given")
    items, with_depth = [], False
    for root in cfg.data.train:
        try:
            if cfg.data.kind == "synth":
                items += find_clear_depth(root)
            else:
                pairs = find_pairs(root)
                if cfg.model.depth and cfg.data.depth:
                    depth = dict((pathlib.Path(c).stem, d) for c, d in find_clear_depth(root, cfg.data.depth))
                    pairs = [(h, c, depth[pathlib.Path(c).stem]) for h, c in pairs if pathlib.Path(c).stem in depth]
                    with_depth = True
                items += pairs
        except ValueError as e:
            raise ConfigError(f"data.train: {e}") from None
    if cfg.data.train_exclude:
        try:
            items = select_scenes(items, exclude=cfg.data.train_exclude,
                                  clear_index=0 if cfg.data.kind == "synth" else 1)
        except ValueError as e:
            raise ConfigError(str(e)) from None
        if not items:
            raise ConfigError("data.train_exclude: leaves no training image")
    if cfg.data.crop == 0 and local_b > 1:
        _check_one_size(items)
    ds = TrainDataset(items, cfg.data.kind, crop=cfg.data.crop, small=cfg.data.small, flip=cfg.data.flip,
                      rot90=cfg.data.rot90, seed=R.seed, with_depth=with_depth)
    sampler = torch.utils.data.DistributedSampler(ds, num_replicas=info.world_size, rank=info.rank, shuffle=True,
                                                  seed=R.seed, drop_last=True)
    steps_per_epoch = len(sampler) // local_b
    if steps_per_epoch < 1:
        raise ConfigError(f"run.batch_size: {R.batch_size} is more than the {len(ds)} training samples")
    val_loader = None
    if cfg.data.val and master:
        try:
            vds = PairsDataset(cfg.data.val, cfg.data.val_limit, cfg.data.val_include)
        except ValueError as e:
            msg = str(e)
            raise ConfigError(msg if msg.startswith("data.") else f"data.val: {msg}") from None
        val_loader = torch.utils.data.DataLoader(vds, batch_size=1, collate_fn=collate)

    # ---- model, losses, optimiser ----
    torch.manual_seed(R.seed)
    model = build_model_from_config(cfg).to(dev)
    depth_net = None
    if cfg.model.depth:
        from fastdehaze.nn import DepthEstimator
        depth_net = DepthEstimator().to(dev)
    joint = Joint(model, depth_net)
    if cfg.optim.channels_last:
        joint = joint.to(memory_format=torch.channels_last)
    losses = build_losses(cfg, dev)
    teacher = build_teacher(cfg, dev) if cfg.model.depth and not with_depth else None
    haze = None
    if cfg.data.kind == "synth":
        from fastdehaze.nn import HazeSynthesis
        haze = HazeSynthesis(cfg.data.synth_preset, backend=cfg.model.backend, return_t=False)
    params = [p for p in joint.parameters() if p.requires_grad]
    Opt = torch.optim.AdamW if cfg.optim.optimizer == "adamw" else torch.optim.Adam
    opt = Opt(params, lr=cfg.optim.lr, betas=tuple(cfg.optim.betas), weight_decay=cfg.optim.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _lr_lambda(cfg))
    scaler = torch.amp.GradScaler("cuda", enabled=cfg.optim.amp == "fp16")
    ema = None
    if cfg.optim.ema > 0:
        from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
        ema = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(cfg.optim.ema), use_buffers=True)
    amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(cfg.optim.amp)

    def autocast():
        return torch.autocast(dev.type, dtype=amp_dtype, enabled=amp_dtype is not None)

    # ---- resume ----
    step, best, corrupt = 0, -math.inf, []
    path = resume or (ckpt.latest_checkpoint(ck_dir) if R.auto_resume else None)
    if path is not None:
        st = ckpt.load_checkpoint(path, map_location=dev)
        model.load_state_dict(ckpt.strip_prefixes(st["model"]))
        if depth_net is not None:
            depth_net.load_state_dict(ckpt.strip_prefixes(st["depth_net"]))
        opt.load_state_dict(st["optimizer"])
        sched.load_state_dict(st["scheduler"])
        if st.get("scaler"):
            scaler.load_state_dict(st["scaler"])
        if ema is not None and st.get("ema") is not None:
            ema.load_state_dict(st["ema"])
        ckpt.set_rng_state(st["rng"])
        step, best, corrupt = int(st["step"]), float(st["best_psnr"]), list(st.get("corrupt", []))
        if master:
            print(f"resumed from {path} at step {step}", flush=True)
    if master:
        # written once the config has passed every check (a refused config leaves no run folder);
        # a resumed run with a changed config keeps the one it ran under so far beside it
        run_dir.mkdir(parents=True, exist_ok=True)
        cfg_text, cfg_file = format_config(cfg, docs=False), run_dir / "config.toml"
        if path is not None and cfg_file.is_file() and cfg_file.read_text() != cfg_text:
            cfg_file.replace(run_dir / f"config_until_step_{step:07d}.toml")
        cfg_file.write_text(cfg_text)

    trained = torch.compile(joint) if cfg.optim.compile else joint
    if info.enabled:
        trained = nn.parallel.DistributedDataParallel(
            trained, device_ids=[dev.index] if dev.type == "cuda" else None)
    log = MetricsLog(run_dir, R.tensorboard) if master else None
    from fastdehaze.nn import model_spec

    def state():
        return {"model": ckpt.strip_prefixes(model.state_dict()), "spec": model_spec(model),
                "depth_net": ckpt.strip_prefixes(depth_net.state_dict()) if depth_net is not None else None,
                "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                "scaler": scaler.state_dict() if scaler.is_enabled() else None,
                "ema": ema.state_dict() if ema is not None else None, "step": step, "best_psnr": best,
                "rng": ckpt.rng_state(), "config": config_to_dict(cfg), "world_size": info.world_size,
                "corrupt": corrupt}

    def save(reason):
        p = ck_dir / f"step_{step:07d}.pt"
        ckpt.save_checkpoint(state(), p)
        ckpt.prune(ck_dir, R.keep_last)
        log.write({"event": "checkpoint", "step": step, "path": str(p), "reason": reason})
        return p

    def do_val():
        nonlocal best
        vm = ema.module if ema is not None else model
        p, s = validate(vm, val_loader, dev, cfg, run_dir, step, autocast)
        log.write({"step": step, "val_psnr": p, "val_ssim": s})
        log.plot()
        bar.write(f"step {step}: validation PSNR {p:.2f} dB SSIM {s:.4f}")
        if p > best:
            best = p
            ckpt.save_checkpoint(state(), ck_dir / "best.pt")

    seen = set(corrupt)
    bar = _Progress(R.steps, step, master, R.log_every)
    last_loss, stopped, last_path, seen_idx = float("nan"), False, None, []
    used, steps_here = 0, 0  # usable samples and steps taken in this process (to refuse a run on no data)
    if master and val_loader is not None and R.val_at_start and step == 0:
        do_val()
    trained.train()
    with _Stop() as stop:
        while step < R.steps and not stopped:
            epoch, pos = divmod(step, steps_per_epoch)
            ds.set_epoch(epoch)
            sampler.set_epoch(epoch)
            loader = torch.utils.data.DataLoader(
                ds, batch_size=local_b, sampler=SkipSampler(sampler, pos * local_b), num_workers=cfg.data.num_workers,
                collate_fn=collate, worker_init_fn=worker_init if cfg.data.num_workers else None, drop_last=True,
                pin_memory=dev.type == "cuda")
            for batch in loader:
                for msg in batch["bad"] + [f"{p}: smaller than data.crop, skipped" for p in batch["small"]]:
                    if msg not in seen:
                        seen.add(msg)
                        corrupt.append(msg)
                        (bar.write if master else print)(f"warning (rank {info.rank}): skipped {msg}")
                        if log is not None:
                            log.write({"event": "skipped", "step": step, "what": msg, "count": len(corrupt)})
                seen_idx += batch["index"]
                lr = sched.get_last_lr()[0]   # the rate this step runs at (read before sched.step())
                loss = _step(batch, trained, losses, teacher, haze, cfg, dev, autocast, opt, sched, scaler, params)
                used, steps_here = used + int(batch["n"]), steps_here + 1
                if not info.enabled and used == 0 and steps_here >= steps_per_epoch:
                    raise ValueError(f"no usable training sample: all {len(ds)} samples of an epoch were skipped "
                                     f"({len(corrupt)} reported above; see data.crop / data.small)")
                if ema is not None:
                    ema.update_parameters(model)
                step += 1
                last_loss = loss
                if master:
                    if step % R.log_every == 0 or step == R.steps:
                        log.write({"step": step, "loss": loss, "lr": lr, "epoch": epoch, "skipped": len(corrupt)})
                    bar.update(step, loss, lr)
                    if val_loader is not None and R.val_every and step % R.val_every == 0 and step < R.steps:
                        do_val()
                    if step % R.ckpt_every == 0 and step < R.steps:
                        last_path = save("every")
                stopped = dist_.all_reduce_flag(stop.flag or step == R.stop_at_step, info)
                if stopped or step >= R.steps:
                    break
            del loader
    bar.close()
    if master:
        if not stopped and val_loader is not None:
            do_val()
        last_path = save("stop" if stopped else "end")
        why = (f"interrupted ({signal.Signals(stop.signum).name})" if stop.signum else "stop_at_step") \
            if stopped else "done"
        print(f"{why} at step {step}/{R.steps}; checkpoint {last_path}"
              + (f"; {len(corrupt)} image(s) skipped" if corrupt else ""), flush=True)
        log.close()
    if info.enabled:
        torch.distributed.barrier()
    return {"step": step, "stopped": stopped, "best_psnr": best, "last_loss": last_loss,
            "checkpoint": str(last_path) if last_path else None, "corrupt": corrupt, "model": model,
            "ema": ema, "seen": seen_idx, "rank": info.rank, "world_size": info.world_size}


def _check_one_size(items):
    """data.crop = 0: every training image must have one size (read from the file headers)."""
    from PIL import Image
    sizes = {}
    for it in items:
        try:
            with Image.open(it[0]) as im:
                sizes.setdefault(im.size, it[0])
        except OSError:
            continue   # a corrupt image is reported and skipped by the loop
        if len(sizes) > 1:
            (a, pa), (b, pb) = list(sizes.items())[:2]
            raise ConfigError(f"data.crop: 0 (whole images) needs training images of one size; {pa} is "
                              f"{a[0]}x{a[1]} and {pb} is {b[0]}x{b[1]} (W x H): set data.crop, or run.batch_size = 1 per rank")


def _step(batch, trained, losses, teacher, haze, cfg, dev, autocast, opt, sched, scaler, params):
    """One optimiser step; returns the loss (a float, this rank's). A batch whose samples were all
    skipped runs on a zero image with weight 0 (so DDP's ranks stay in step)."""
    weight = 1.0
    if batch["n"] == 0:
        c = cfg.data.crop or 64
        z = torch.zeros(1, 3, c, c)
        batch = {"hazy": z, "clear": z, "depth": torch.zeros(1, 1, c, c), "seed": [0]}
        weight = 0.0
    clear = batch["clear"].to(dev, non_blocking=True)
    if haze is not None:
        depth = batch["depth"].to(dev, non_blocking=True)
        hazy = torch.cat([haze(clear[i:i + 1], depth[i:i + 1],
                               generator=torch.Generator().manual_seed(int(batch["seed"][i]))).hazy
                          for i in range(clear.shape[0])])
    else:
        hazy = batch["hazy"].to(dev, non_blocking=True)
    if cfg.optim.channels_last:
        hazy, clear = hazy.contiguous(memory_format=torch.channels_last), clear.contiguous(memory_format=torch.channels_last)
    depth_target = None
    if cfg.model.depth:
        if teacher is not None:
            with torch.no_grad():
                depth_target = teacher(clear).float()
        else:
            depth_target = batch["depth"].to(dev)
    with autocast():
        J, J0, D = trained(hazy)
        loss = compute_loss(losses, cfg, J, J0, clear, hazy, D, depth_target)
    loss = loss * weight
    scaler.scale(loss).backward()
    if cfg.optim.grad_clip:
        scaler.unscale_(opt)
        torch.nn.utils.clip_grad_norm_(params, cfg.optim.grad_clip)
    scaler.step(opt)
    scaler.update()
    opt.zero_grad(set_to_none=True)
    sched.step()
    return float(loss.detach())
