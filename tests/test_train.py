"""Tests of the training job (fastdehaze.train): config errors, corrupt images, exact resume,
SIGINT, DDP against one process, the depth mode, and that training improves.

Small on purpose (2 shared CPU cores): tiny folders of 80x80 crops of the shared training
images, 64-px crops, a small PRM (patch 7, r 8) and UNet (width 4, levels 2), one thread."""
from __future__ import annotations

import json
import os
import pathlib
import re
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from fastdehaze.train.config import ConfigError, format_config, load_config

ROOT = pathlib.Path(__file__).resolve().parents[1]
SMALL = ["model.prm_args={patch = 7, r = 8}", "model.base_args={width = 4, levels = 2}", "data.crop=64",
         "run.threads=1", "run.log_every=1", "run.samples=0", "optim.grad_clip=1.0"]


def _env():
    env = dict(os.environ)
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONPATH=str(ROOT) + os.pathsep + env.get("PYTHONPATH", ""))
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)
    return env


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """8 training pairs (80x80 crops of train/sots_indoor) and 2 validation pairs (96x96 crops of pairs/sots_indoor)."""
    from PIL import Image
    from conftest import DATA as data_dir
    if not pathlib.Path(data_dir).is_dir():
        pytest.skip(f"test images not found at {data_dir}")
    root = tmp_path_factory.mktemp("tiny")
    src = pathlib.Path(data_dir) / "train" / "sots_indoor"
    for sub in ("hazy", "clear"):
        (root / "train" / sub).mkdir(parents=True)
    for sub in ("hazy", "gt"):
        (root / "val" / sub).mkdir(parents=True)
    clears = sorted((src / "clear").iterdir())[:8]
    for i, c in enumerate(clears):
        h = src / "hazy" / f"{c.stem}_{1 + i % 10}.png"
        box = (100 + 20 * i, 120, 180 + 20 * i, 200)
        Image.open(c).convert("RGB").crop(box).save(root / "train" / "clear" / f"{c.stem}.png")
        Image.open(h).convert("RGB").crop(box).save(root / "train" / "hazy" / h.name)
    vsrc = pathlib.Path(data_dir) / "pairs" / "sots_indoor"
    for h in sorted((vsrc / "hazy").iterdir())[:2]:
        box = (200, 150, 296, 246)
        Image.open(h).convert("RGB").crop(box).save(root / "val" / "hazy" / h.name)
        Image.open(vsrc / "gt" / h.name).convert("RGB").crop(box).save(root / "val" / "gt" / h.name)
    return root


def _write_cfg(path, tiny, run_dir, extra=()):
    cfg = load_config(None, [f'data.train=["{tiny / "train"}"]', f"run.dir={run_dir}", *SMALL, *extra])
    path.write_text(format_config(cfg, docs=False))
    return path


def _train_cli(cfg_path, *more, timeout=240, check=True):
    r = subprocess.run([sys.executable, "-m", "fastdehaze", "train", "--config", str(cfg_path), *more],
                       capture_output=True, text=True, env=_env(), timeout=timeout, cwd=ROOT)
    if check:
        assert r.returncode == 0, r.stdout + r.stderr
    return r


def _final(run_dir):
    from fastdehaze.train.checkpoint import latest_checkpoint, load_checkpoint
    return load_checkpoint(latest_checkpoint(pathlib.Path(run_dir) / "checkpoints"))


# ---- config ---------------------------------------------------------------------------------

def test_bad_config_key_is_a_clear_error(tmp_path):
    with pytest.raises(ConfigError, match=r"optim\.lrx: unknown key"):
        load_config(None, ["optim.lrx=1"])
    with pytest.raises(ConfigError, match=r"optim\.lr: must be > 0"):
        load_config(None, ["optim.lr=-1"])
    with pytest.raises(ConfigError, match=r"data\.crop: must be an integer"):
        load_config(None, ["data.crop=1.5"])
    with pytest.raises(ConfigError, match=r"nosuch: unknown section"):
        load_config(None, ["nosuch.x=1"])
    with pytest.raises(ConfigError, match=r"optim\.amp: must be one of"):
        load_config(None, ["optim.amp=fp8"])
    bad = tmp_path / "bad.toml"
    bad.write_text("[run]\nsteps = 10\nstesp = 3\n")
    r = subprocess.run([sys.executable, "-m", "fastdehaze", "train", "--config", str(bad)], capture_output=True,
                       text=True, env=_env(), cwd=ROOT, timeout=120)
    assert r.returncode == 2 and "run.stesp: unknown key" in r.stderr and "Traceback" not in r.stderr
    # --print-config is valid TOML that loads back to the defaults
    out = tmp_path / "defaults.toml"
    out.write_text(format_config())
    assert load_config(str(out)) == load_config(None)


def test_contrastive_without_vgg_weights_is_refused(tiny, tmp_path):
    from fastdehaze.train.loop import train
    cfg = load_config(None, [f'data.train=["{tiny / "train"}"]', f"run.dir={tmp_path}", *SMALL,
                             "loss.contrast=iicl", "run.steps=1", "data.num_workers=0"])
    with pytest.raises(ConfigError, match=r"loss\.vgg_weights"):
        train(cfg)


# ---- data -----------------------------------------------------------------------------------

def test_corrupt_image_is_skipped(tiny, tmp_path, capsys):
    import shutil
    from fastdehaze.train.loop import train
    data = tmp_path / "data"
    shutil.copytree(tiny / "train", data)
    bad = sorted((data / "hazy").iterdir())[0]
    bad.write_bytes(bad.read_bytes()[:60])          # truncated PNG
    cfg = load_config(None, [f'data.train=["{data}"]', f"run.dir={tmp_path / 'run'}", *SMALL, "run.steps=8",
                             "run.batch_size=2", "data.num_workers=0"])
    res = train(cfg)                               # 2 epochs of 4 steps: the bad sample comes twice
    assert res["step"] == 8 and not res["stopped"]
    assert len(res["corrupt"]) == 1 and bad.name in res["corrupt"][0]
    out = capsys.readouterr().out
    assert out.count("warning (rank 0): skipped") == 1 and bad.name in out
    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["count"] for r in rows if r.get("event") == "skipped"] == [1]
    assert [r["skipped"] for r in rows if "loss" in r][-1] == 1



def test_run_with_every_sample_skipped_is_an_error(tiny, tmp_path):
    """All images smaller than the crop with data.small=skip: no usable sample, so the run stops
    with an error after one epoch instead of "training" on empty batches and exiting 0."""
    from fastdehaze.train.loop import train
    cfg = load_config(None, [f'data.train=["{tiny / "train"}"]', f"run.dir={tmp_path / 'run'}", *SMALL,
                             "data.crop=96", "data.small=skip", "run.steps=8", "run.batch_size=2",
                             "data.num_workers=0"])
    with pytest.raises(ValueError, match="no usable training sample"):
        train(cfg)

def test_sample_draws_depend_only_on_seed_epoch_index(tiny):
    from fastdehaze.train.data import TrainDataset, find_pairs
    ds = TrainDataset(find_pairs(tiny / "train"), crop=48)
    a = ds[3]
    ds[1], ds[5]
    assert torch.equal(ds[3]["hazy"], a["hazy"])
    ds.set_epoch(1)
    assert not torch.equal(ds[3]["hazy"], a["hazy"])


# ---- resume ---------------------------------------------------------------------------------

def test_resume_exact(tiny, tmp_path):
    """Stopped at step 3 of a 4-step epoch, resumed in a new process from the file on disk,
    num_workers=2, EMA and the warm-up + cosine schedule on: torch.equal to an uninterrupted run."""
    extra = ["run.steps=7", "run.batch_size=2", "data.num_workers=2", "optim.ema=0.9", "optim.warmup_steps=2",
             "optim.lr=1e-3", "run.ckpt_every=100"]
    a = _write_cfg(tmp_path / "a.toml", tiny, tmp_path / "a", extra)
    b = _write_cfg(tmp_path / "b.toml", tiny, tmp_path / "b", extra + ["run.stop_at_step=3"])
    _train_cli(a)
    r = _train_cli(b)
    assert "at step 3/7" in r.stdout
    mid = _final(tmp_path / "b")
    assert mid["step"] == 3
    _write_cfg(tmp_path / "b.toml", tiny, tmp_path / "b", extra)           # same run, no stop
    r = _train_cli(b)
    assert "resumed from" in r.stdout and "step_0000003.pt" in r.stdout
    # the resumed run's changed config replaced config.toml; the one of steps 1-3 is kept beside it
    assert "stop_at_step = 3" in (tmp_path / "b" / "config_until_step_0000003.toml").read_text()
    assert "stop_at_step = 0" in (tmp_path / "b" / "config.toml").read_text()
    fa, fb = _final(tmp_path / "a"), _final(tmp_path / "b")
    assert fa["step"] == fb["step"] == 7
    for k in fa["model"]:
        assert torch.equal(fa["model"][k], fb["model"][k]), k
    for k in fa["ema"]:
        assert torch.equal(fa["ema"][k], fb["ema"][k]), k
    assert fa["scheduler"]["last_epoch"] == fb["scheduler"]["last_epoch"] == 7
    # the mid-run weights differ from the end (the test would pass trivially otherwise)
    assert not all(torch.equal(mid["model"][k], fa["model"][k]) for k in fa["model"])


def test_resume_after_sigint(tiny, tmp_path):
    """SIGINT to the whole process group (main process and DataLoader workers) mid-run: the step
    finishes, a checkpoint is written, exit 0; that checkpoint loads and the run resumes from it."""
    cfg = _write_cfg(tmp_path / "c.toml", tiny, tmp_path / "run",
                     ["run.steps=100000", "run.batch_size=2", "data.num_workers=2", "run.ckpt_every=100000"])
    p = subprocess.Popen([sys.executable, "-m", "fastdehaze", "train", "--config", str(cfg)], stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, text=True, env=_env(), cwd=ROOT, start_new_session=True)
    log = tmp_path / "run" / "metrics.jsonl"
    try:
        deadline = time.time() + 180
        while time.time() < deadline:
            if log.exists() and sum('"loss"' in x for x in log.read_text().splitlines()) >= 2:
                break
            assert p.poll() is None, p.stdout.read()
            time.sleep(0.2)
        os.killpg(p.pid, signal.SIGINT)
        out, _ = p.communicate(timeout=120)
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
    assert p.returncode == 0, out
    assert "interrupted (SIGINT)" in out and "Traceback" not in out
    st = _final(tmp_path / "run")
    n = st["step"]
    assert 2 <= n < 100000
    assert not list((tmp_path / "run" / "checkpoints").glob(".*.tmp"))
    _write_cfg(tmp_path / "c.toml", tiny, tmp_path / "run", ["run.steps=%d" % (n + 2), "run.batch_size=2",
                                                             "data.num_workers=0"])
    r = _train_cli(cfg)
    assert "resumed from" in r.stdout and _final(tmp_path / "run")["step"] == n + 2


# ---- distributed ----------------------------------------------------------------------------

_DDP_SCRIPT = r"""
import os, sys, torch
from fastdehaze.train.config import load_config
from fastdehaze.train.loop import train
cfg = load_config(sys.argv[1])
res = train(cfg)
torch.save({"model": res["model"].state_dict(), "seen": res["seen"], "world": res["world_size"]},
           os.path.join(sys.argv[2], f"rank{res['rank']}_of{res['world_size']}.pt"))
"""


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ddp_matches_single_process(tiny, tmp_path):
    """torchrun --nproc_per_node 2 on CPU (gloo), L1 only, 64-px crops, 3 steps of a global batch
    of 4 from 8 samples: both ranks end with identical weights, saw disjoint samples (together the
    same as one process), and match one process with the global batch of 4 within 1e-5 (2 steps =
    one epoch of the 8 samples)."""
    script = tmp_path / "ddp_job.py"
    script.write_text(_DDP_SCRIPT)
    extra = ["run.steps=2", "run.batch_size=4", "data.num_workers=0", "run.pg_timeout_s=60", "optim.lr=1e-3",
             "run.ckpt_every=100"]
    _write_cfg(tmp_path / "d.toml", tiny, tmp_path / "ddp", extra)
    _write_cfg(tmp_path / "s.toml", tiny, tmp_path / "single", extra)
    port = _free_port()
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--nnodes", "1",
                        "--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{port}", str(script),
                        str(tmp_path / "d.toml"), str(tmp_path)],
                       capture_output=True, text=True, env=_env(), cwd=ROOT, timeout=300)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    r = subprocess.run([sys.executable, str(script), str(tmp_path / "s.toml"), str(tmp_path)], capture_output=True,
                       text=True, env=_env(), cwd=ROOT, timeout=300)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    r0, r1, one = (torch.load(tmp_path / n, weights_only=True) for n in ("rank0_of2.pt", "rank1_of2.pt", "rank0_of1.pt"))
    for k in r0["model"]:
        assert torch.equal(r0["model"][k], r1["model"][k]), k
    assert set(r0["seen"]).isdisjoint(r1["seen"]) and len(r0["seen"]) == len(r1["seen"]) == 4
    assert sorted(r0["seen"] + r1["seen"]) == sorted(one["seen"])
    worst = max(float((r0["model"][k] - one["model"][k]).abs().max()) for k in r0["model"])
    assert worst <= 1e-5, worst
    moved = max(float((r0["model"][k] - v).abs().max()) for k, v in _init_state(tmp_path / "s.toml").items())
    assert moved > 1e-4      # the weights did move, so the comparison means something


def _init_state(cfg_path):
    from fastdehaze.train.loop import build_model_from_config
    cfg = load_config(str(cfg_path))
    torch.manual_seed(cfg.run.seed)
    return build_model_from_config(cfg).state_dict()


# ---- depth mode -----------------------------------------------------------------------------

def test_depth_mode_with_a_teacher(tiny, tmp_path):
    """DCMPNet mode: a DepthEstimator trained jointly with DCMPNetLoss; targets from a tiny frozen
    teacher model file written here."""
    from fastdehaze.nn import DepthEstimator, save_model
    from fastdehaze.train.loop import train
    torch.manual_seed(1)
    teacher = DepthEstimator(**_tiny_depth_args())
    save_model(teacher, tmp_path / "teacher.safetensors")
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    cfg = load_config(None, [f'data.train=["{tiny / "train"}"]', f"run.dir={tmp_path / 'run'}", *SMALL, "run.steps=2",
                             "run.batch_size=2", "data.num_workers=0", "model.depth=true",
                             f"model.depth_teacher={tmp_path / 'teacher.safetensors'}"])
    res = train(cfg)
    assert res["step"] == 2 and np.isfinite(res["last_loss"])
    st = _final(tmp_path / "run")
    assert st["depth_net"] is not None and len(st["depth_net"]) > 0
    from fastdehaze.nn import load_model
    again = load_model(tmp_path / "teacher.safetensors")
    assert all(torch.equal(before[k], v) for k, v in again.state_dict().items())   # teacher file untouched
    # a .pt2 teacher needs trust_code
    with pytest.raises(ConfigError, match="trust_code"):
        (tmp_path / "t.pt2").write_bytes(b"x")
        cfg = load_config(None, [f'data.train=["{tiny / "train"}"]', f"run.dir={tmp_path / 'r2'}", *SMALL,
                                 "run.steps=1", "data.num_workers=0", "model.depth=true",
                                 f"model.depth_teacher={tmp_path / 't.pt2'}"])
        train(cfg)


def _tiny_depth_args():
    import inspect
    from fastdehaze.nn import DepthEstimator
    ps = inspect.signature(DepthEstimator).parameters
    return {k: v for k, v in (("width", 4), ("levels", 2)) if k in ps}


# ---- export / eval --------------------------------------------------------------------------

def test_export_and_eval(tiny, tmp_path):
    from fastdehaze.nn import load_model
    from fastdehaze.train.loop import train
    cfg = load_config(None, [f'data.train=["{tiny / "train"}"]', f"run.dir={tmp_path / 'run'}", *SMALL, "run.steps=2",
                             "run.batch_size=2", "data.num_workers=0", "optim.ema=0.5"])
    res = train(cfg)
    from fastdehaze.cli import main
    out = tmp_path / "m.safetensors"
    assert main(["export", res["checkpoint"], str(out), "--weights", "raw"]) == 0
    m = load_model(out)
    sd = res["model"].state_dict()
    assert all(torch.equal(sd[k], v) for k, v in m.state_dict().items())
    assert main(["eval", str(tiny / "val" / "hazy"), str(tiny / "val" / "gt"), "-o", str(tmp_path / "m.csv")]) == 0
    rows = (tmp_path / "m.csv").read_text().splitlines()
    assert rows[0].startswith("image,clear,psnr,ssim") and rows[-1].startswith("mean,2,")


def test_export_refuses_what_is_not_a_training_checkpoint(tmp_path, capsys):
    """A model file, a torch file of something else, a text file, a missing file: status 2 and one
    line naming the file, no traceback, nothing written."""
    from fastdehaze.cli import main
    from fastdehaze.nn import UNet, save_model
    save_model(UNet(width=4, levels=1), tmp_path / "model.safetensors")
    torch.save({"a": torch.zeros(1)}, tmp_path / "dict.pt")
    torch.save(torch.zeros(2), tmp_path / "tensor.pt")
    (tmp_path / "notes.txt").write_text("hello")
    cases = {"model.safetensors": "a model file .* needs no export", "dict.pt": "not a checkpoint of .* 'spec'",
             "tensor.pt": "not a checkpoint of .*Tensor", "notes.txt": "cannot be loaded as a torch checkpoint",
             "missing.pt": "file not found"}
    for name, msg in cases.items():
        out = tmp_path / f"out_{name}.safetensors"
        assert main(["export", str(tmp_path / name), str(out)]) == 2, name
        err = capsys.readouterr().err
        assert re.search(f"fastdehaze export: checkpoint .*{name}: {msg}", err), err
        assert "Traceback" not in err and not out.exists()


# ---- training improves ----------------------------------------------------------------------

def test_training_improves(data_dir, tmp_path):
    """A short run on whole frames of ../shared/data/train (the shipped model's recipe, fewer
    steps) ends >= 1 dB above the same model at step 0 on 4 pairs of
    ../shared/data/pairs/sots_indoor (full resolution), above the hazy input, and its training
    loss falls."""
    from fastdehaze import metrics
    from fastdehaze.train.data import PairsDataset
    from fastdehaze.train.loop import train
    d = pathlib.Path(data_dir)
    cfg = load_config(None, [f'data.train=["{d / "train" / "sots_indoor"}"]', f"data.val={d / 'pairs' / 'sots_indoor'}",
                             "data.val_limit=4", f"run.dir={tmp_path}", "run.val_at_start=true", *IMPROVE])
    res = train(cfg)
    rows = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    val = [r["val_psnr"] for r in rows if "val_psnr" in r]
    loss = [r["loss"] for r in rows if "loss" in r]
    vds = PairsDataset(d / "pairs" / "sots_indoor", 4)
    hazy = float(torch.stack([metrics.psnr(s["hazy"][None], s["clear"][None])[0] for s in vds]).mean())
    print(f"validation PSNR at steps 0 and {cfg.run.steps}: {val}; hazy {hazy:.2f} dB; loss {loss[:3]} -> {loss[-3:]}")
    assert val[-1] >= val[0] + 1.0, val
    assert val[-1] > hazy
    assert np.mean(loss[-3:]) < np.mean(loss[:3]), loss
    assert (tmp_path / "plot.png").stat().st_size > 0


IMPROVE = ["run.steps=60", "run.batch_size=2", "data.crop=0", "data.rot90=false", "data.num_workers=1",
           "model.base_args={width = 4, levels = 1, zero_init = true}",
           'model.prm_args={local = "unet", levels = 1, width = 8, features = "rich", A_prior = "white", scale = 8}',
           "optim.optimizer=adam", "optim.lr=2e-3", "optim.warmup_steps=10", "optim.min_lr_ratio=0.0",
           "optim.grad_clip=0.0", "loss.l1_j0=1.0", "run.threads=2", "run.samples=0", "run.val_every=0",
           "run.log_every=2"]


# ---- whole frames and held-out scenes -------------------------------------------------------

def test_whole_frames_and_scene_holdout(tiny, tmp_path):
    """data.crop = 0 trains on whole images; data.train_exclude removes scenes from training and
    data.val_include validates on them only (a held-out-scenes run in one command)."""
    from fastdehaze.train.loop import train
    stems = sorted(p.stem for p in (tiny / "train" / "clear").iterdir())
    held = stems[:2]
    cfg = load_config(None, [f'data.train=["{tiny / "train"}"]', f"run.dir={tmp_path}", *SMALL, "data.crop=0",
                             "run.steps=2", "run.batch_size=2", "data.num_workers=0", f"data.val={tiny / 'train'}",
                             f"data.train_exclude={json.dumps(held)}", f"data.val_include={json.dumps(held)}"])
    res = train(cfg)
    assert res["step"] == 2
    from fastdehaze.train.data import PairsDataset, find_pairs, select_scenes
    kept = select_scenes(find_pairs(tiny / "train"), exclude=held)
    assert len(kept) == len(stems) - 2 and not {pathlib.Path(c).stem for _, c in kept} & set(held)
    assert len(PairsDataset(tiny / "train", include=held)) == 2
    rows = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert any("val_psnr" in r for r in rows)


@pytest.mark.parametrize("key", ["data.train_exclude", "data.val_include"])
def test_unknown_scene_stem_is_a_clear_error(tiny, tmp_path, key):
    from fastdehaze.train.loop import train
    cfg = load_config(None, [f'data.train=["{tiny / "train"}"]', f"run.dir={tmp_path}", *SMALL, "run.steps=1",
                             "run.batch_size=2", "data.num_workers=0", f"data.val={tiny / 'train'}",
                             f'{key}=["no_such_scene"]'])
    with pytest.raises(ConfigError, match=rf"{key}.*no_such_scene"):
        train(cfg)


def test_whole_frames_of_different_sizes_are_a_clear_error(tiny, tmp_path):
    from PIL import Image
    from fastdehaze.train.loop import train
    root = tmp_path / "mixed"
    for sub in ("hazy", "clear"):
        (root / sub).mkdir(parents=True)
    for i, size in enumerate([(40, 32), (48, 32)]):
        for sub in ("hazy", "clear"):
            Image.new("RGB", size, (100 + 20 * i, 120, 140)).save(root / sub / f"s{i}.png")
    cfg = load_config(None, [f'data.train=["{root}"]', f"run.dir={tmp_path / 'run'}", *SMALL, "data.crop=0",
                             "data.rot90=false", "run.steps=1", "run.batch_size=2", "data.num_workers=0"])
    with pytest.raises(ValueError, match="data.crop"):
        train(cfg)


def test_quality_heldout_evaluates_only_the_excluded_scenes(tiny, tmp_path):
    """benchmarks/quality_heldout.py scores a run on the scenes its config left out of training,
    and refuses a run that left none out (its numbers would be training numbers)."""
    sys.path.insert(0, str(ROOT))
    from benchmarks.quality_heldout import evaluate_run
    from fastdehaze.train.loop import train
    stems = sorted(p.stem for p in (tiny / "train" / "clear").iterdir())
    base = [f'data.train=["{tiny / "train"}"]', *SMALL, "run.steps=1", "run.batch_size=2", "data.num_workers=0"]
    train(load_config(None, base + [f"run.dir={tmp_path / 'held'}", f"data.train_exclude={json.dumps(stems[:2])}"]))
    res = evaluate_run(tmp_path / "held", tiny / "train")
    assert res["held_out"] == stems[:2] and sorted(res["per_scene"]) == stems[:2] and res["images"] == 2
    assert all(np.isfinite(res["mean"][k]["psnr"]) for k in ("hazy", "dcp", "model"))
    train(load_config(None, base + [f"run.dir={tmp_path / 'all'}"]))
    with pytest.raises(SystemExit, match="leaves no scene out"):
        evaluate_run(tmp_path / "all", tiny / "train")


def test_val_include_needs_val():
    with pytest.raises(ConfigError, match="data.val_include.*data.val"):
        load_config(None, ['data.val_include=["1431"]'])


def test_whole_frames_of_different_sizes_are_refused_before_training(tiny, tmp_path):
    """The size check reads the file headers up front (also with DataLoader workers)."""
    from PIL import Image
    from fastdehaze.train.loop import train
    root = tmp_path / "mixed"
    for sub in ("hazy", "clear"):
        (root / sub).mkdir(parents=True)
    for i, size in enumerate([(40, 32), (40, 32), (48, 32)]):
        for sub in ("hazy", "clear"):
            Image.new("RGB", size, (100, 120, 140)).save(root / sub / f"s{i}.png")
    cfg = load_config(None, [f'data.train=["{root}"]', f"run.dir={tmp_path / 'run'}", *SMALL, "data.crop=0",
                             "run.steps=1", "run.batch_size=2", "data.num_workers=2"])
    with pytest.raises(ConfigError, match=r"data.crop.*s2.png is 48x32"):
        train(cfg)
    assert not (tmp_path / "run").exists()     # a refused config leaves no run folder behind


def test_synth_train_exclude_unknown_stem_is_an_error(tmp_path):
    from PIL import Image
    from fastdehaze.train.loop import train
    root = tmp_path / "synth"
    for sub in ("clear", "depth"):
        (root / sub).mkdir(parents=True)
    for i in range(2):
        Image.new("RGB", (32, 32), (90, 100, 110)).save(root / "clear" / f"c{i}.png")
        Image.new("L", (32, 32), 128).save(root / "depth" / f"c{i}.png")
    cfg = load_config(None, [f'data.train=["{root}"]', f"run.dir={tmp_path / 'run'}", *SMALL, "data.kind=synth",
                             'data.train_exclude=["zzz"]', "run.steps=1", "run.batch_size=1", "data.num_workers=0"])
    with pytest.raises(ConfigError, match="data.train_exclude.*zzz"):
        train(cfg)


def test_logged_lr_is_the_rate_the_step_ran_at(tiny, tmp_path):
    from fastdehaze.train.loop import train
    cfg = load_config(None, [f'data.train=["{tiny / "train"}"]', f"run.dir={tmp_path}", *SMALL, "run.steps=2",
                             "run.batch_size=2", "data.num_workers=0", "optim.lr=1e-3", "optim.warmup_steps=4"])
    train(cfg)
    lrs = [json.loads(x)["lr"] for x in (tmp_path / "metrics.jsonl").read_text().splitlines() if '"lr"' in x]
    assert lrs[:2] == pytest.approx([1e-3 / 4, 2e-3 / 4])
