"""Checkpoints: everything a run needs to continue exactly, written atomically.

A checkpoint (``checkpoints/step_<N>.pt``, and ``best.pt`` for the best validation PSNR) is a
``torch.save`` dict of plain tensors and containers, so it loads with
``torch.load(weights_only=True)`` (no pickled code runs):

``model`` (state dict, ``_orig_mod.``/``module.`` prefixes of torch.compile/DDP stripped),
``spec`` (the model's architecture spec, for export), ``optimizer``, ``scheduler``, ``scaler``,
``ema`` (or None), ``depth_net`` (depth mode, or None), ``step`` (optimiser steps done = batches
consumed; the epoch and the position inside it follow from the steps per epoch),
``best_psnr``, ``rng`` (torch CPU, CUDA, numpy, python states), ``config`` (the resolved
config dict), ``world_size``, ``corrupt`` (paths reported so far).

Writing: to a temporary file in the same folder, flushed and fsync'ed, then ``os.replace``'d
over the name and the folder fsync'ed: a crash leaves the old file or the new one, never half
of one. Older step checkpoints beyond ``keep_last`` are removed after the new one is in place.
"""
from __future__ import annotations

import os
import pathlib
import random
import re
import tempfile
from typing import Optional

import numpy as np
import torch

__all__ = ["strip_prefixes", "save_checkpoint", "load_checkpoint", "latest_checkpoint", "rng_state",
           "set_rng_state", "prune"]

_STEP = re.compile(r"step_(\d+)\.pt$")


def strip_prefixes(state: dict) -> dict:
    """State dict keys without the ``_orig_mod.`` (torch.compile) and ``module.`` (DDP) prefixes."""
    out = {}
    for k, v in state.items():
        while True:
            if k.startswith("_orig_mod."):
                k = k[len("_orig_mod."):]
            elif k.startswith("module."):
                k = k[len("module."):]
            else:
                break
        out[k.replace("._orig_mod.", ".")] = v
    return out


def rng_state() -> dict:
    np_state = np.random.get_state()
    st = {"torch": torch.get_rng_state(),
          "numpy": {"key": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                    "has_gauss": int(np_state[3]), "gauss": float(np_state[4])},
          "python": random.getstate(),
          "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}
    return st


def set_rng_state(st: dict):
    torch.set_rng_state(st["torch"])
    n = st["numpy"]
    np.random.set_state(("MT19937", n["key"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    py = st["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    if st.get("cuda") and torch.cuda.is_available() and len(st["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(st["cuda"])


def _fsync_dir(d):
    try:
        fd = os.open(d, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def save_checkpoint(state: dict, path) -> None:
    """Write ``state`` to ``path`` atomically (temporary file, fsync, rename)."""
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    _fsync_dir(path.parent)


_CHECKPOINT_KEYS = ("model", "spec", "step")


def load_checkpoint(path, map_location="cpu") -> dict:
    """``torch.load(path, weights_only=True)`` of a ``fastdehaze train`` checkpoint. A missing or
    unreadable file, a model file (.safetensors: already exported) or any other file that is not
    such a checkpoint (not a dict with the entries ``model``, ``spec`` and ``step``) is a
    ValueError naming it."""
    p = pathlib.Path(path)
    if p.suffix == ".safetensors" and p.is_file():
        raise ValueError(f"checkpoint {path}: a model file (.safetensors), not a training checkpoint: it needs no "
                         "export (use it with `dehaze --model`)")
    try:
        st = torch.load(path, map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise ValueError(f"checkpoint {path}: file not found") from None
    except Exception as e:  # noqa: BLE001  (truncated zip, unpickling refused, ...)
        raise ValueError(f"checkpoint {path}: cannot be loaded as a torch checkpoint ({type(e).__name__}: "
                         f"{' '.join(str(e).split())[:300]})") from None
    missing = [k for k in _CHECKPOINT_KEYS if k not in st] if isinstance(st, dict) else list(_CHECKPOINT_KEYS)
    if missing:
        raise ValueError(f"checkpoint {path}: not a checkpoint of `fastdehaze train` (a torch "
                         f"{type(st).__name__} without {', '.join(repr(k) for k in missing)})")
    return st


def latest_checkpoint(ckpt_dir) -> Optional[pathlib.Path]:
    """The step checkpoint with the highest step in ``ckpt_dir`` (None when there is none)."""
    d = pathlib.Path(ckpt_dir)
    if not d.is_dir():
        return None
    best = None
    for p in d.iterdir():
        m = _STEP.match(p.name)
        if m and (best is None or int(m.group(1)) > best[0]):
            best = (int(m.group(1)), p)
    return best[1] if best else None


def prune(ckpt_dir, keep_last: int):
    d = pathlib.Path(ckpt_dir)
    steps = sorted((int(m.group(1)), p) for p in d.iterdir() if (m := _STEP.match(p.name)))
    for _, p in steps[:-keep_last]:
        try:
            p.unlink()
        except OSError:
            pass
