"""Training data: paired folders, the RESIDE ITS layout, clear + depth for on-device haze.

Every random draw of a sample (crop position, flip, rotation, and the haze of a synthetic
sample) comes from ``numpy.random.default_rng([seed, epoch, index])`` (and a torch generator
seeded from it), so a sample is the same whichever worker loads it and whenever: results do
not depend on worker scheduling, and resuming mid-epoch needs no worker RNG state.

A corrupt or unreadable image makes its sample come back as ``None`` with the path;
:func:`collate` drops it and lists the path, the loop reports each path once and counts it.
"""
from __future__ import annotations

import os
import pathlib
import signal
from typing import List, Optional

import numpy as np
import torch

from ..io import IMAGE_EXTENSIONS, read_image

__all__ = ["find_pairs", "find_clear_depth", "TrainDataset", "PairsDataset", "collate", "select_scenes", "SkipSampler",
           "worker_init", "load_rgb"]


def _images(d: pathlib.Path):
    return sorted(p for p in d.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)


def _clear_dir(root: pathlib.Path) -> Optional[pathlib.Path]:
    for name in ("gt", "clear", "GT"):
        if (root / name).is_dir():
            return root / name
    return None


def find_pairs(root) -> List[tuple]:
    """(hazy, clear) path pairs of a folder with hazy/ and gt/ (or clear/).

    A hazy file is paired with the clear file of the same stem, else (RESIDE ITS) with the clear
    file named by the part of its stem before the first ``_`` (``hazy/1401_3.png`` ->
    ``clear/1401.png``). Raises ValueError naming the folder when it holds no pairs."""
    root = pathlib.Path(root)
    cd = _clear_dir(root)
    if not (root / "hazy").is_dir() or cd is None:
        raise ValueError(f"data folder {root}: expected hazy/ and gt/ (or clear/) inside")
    clear = {p.stem: p for p in _images(cd)}
    out = []
    for h in _images(root / "hazy"):
        c = clear.get(h.stem) or clear.get(h.stem.split("_")[0])
        if c is not None:
            out.append((str(h), str(c)))
    if not out:
        raise ValueError(f"data folder {root}: no hazy image matches a clear image by stem")
    return out


def find_clear_depth(root, depth_dir=None) -> List[tuple]:
    """(clear, depth) pairs: clear/ images and depth/ maps of the same stem (or ``<stem>_depth``)."""
    root = pathlib.Path(root)
    cd = _clear_dir(root) or root
    dd = pathlib.Path(depth_dir) if depth_dir else root / "depth"
    if not dd.is_dir():
        raise ValueError(f"data folder {root}: no depth folder {dd}")
    depth = {p.stem: p for p in _images(dd)}
    out = []
    for c in _images(cd):
        d = depth.get(c.stem + "_depth") or depth.get(c.stem)
        if d is not None:
            out.append((str(c), str(d)))
    if not out:
        raise ValueError(f"data folder {root}: no clear image has a depth map in {dd}")
    return out


def load_rgb(path) -> torch.Tensor:
    """[3,H,W] float32 in [0, 1] (grey replicated, alpha dropped, 16-bit kept)."""
    img = read_image(path)
    a = img.pixels
    scale = 65535.0 if a.dtype == np.uint16 else 255.0
    x = torch.from_numpy(np.ascontiguousarray(a)).permute(2, 0, 1).to(torch.float32) / scale
    return x.expand(3, -1, -1).contiguous() if x.shape[0] == 1 else x


def _load_depth(path) -> torch.Tensor:
    img = read_image(path)
    a = img.pixels.astype(np.float32)
    return torch.from_numpy(np.ascontiguousarray(a[..., :1])).permute(2, 0, 1)   # [1,H,W]; HazeSynthesis normalises


def _augment(tensors, rng, crop, small, flip, rot90):
    """Crop the same window of every [C,H,W] tensor, then flip/rotate them alike; None = skip.
    ``crop`` 0 keeps the whole image (rotations are then by 0 or 180 degrees unless it is square,
    so that a batch keeps one shape)."""
    H, W = tensors[0].shape[-2:]
    if crop == 0:
        window = None
    else:
        if H < crop or W < crop:
            if small == "skip":
                return None
            ph, pw = max(0, crop - H), max(0, crop - W)
            mode = "reflect" if ph < H and pw < W else "replicate"
            tensors = [torch.nn.functional.pad(t[None], (0, pw, 0, ph), mode=mode)[0] for t in tensors]
            H, W = tensors[0].shape[-2:]
        window = (int(rng.integers(0, H - crop + 1)), int(rng.integers(0, W - crop + 1)))
    f = bool(rng.integers(0, 2)) if flip else False
    k = int(rng.integers(0, 4)) if rot90 else 0
    if window is None and H != W:
        k = 2 * (k % 2)
    out = []
    for t in tensors:
        if window is not None:
            y, x = window
            t = t[:, y:y + crop, x:x + crop]
        if f:
            t = t.flip(-1)
        if k:
            t = torch.rot90(t, k, (-2, -1))
        out.append(t.contiguous())
    return out


class TrainDataset(torch.utils.data.Dataset):
    """Random crops of training samples; ``set_epoch`` before each epoch's iterator.

    ``items``: (hazy, clear) paths (kind "pairs"), (clear, depth) paths (kind "synth"), or
    (hazy, clear, depth) in the depth mode with a depth folder. A sample is a dict with
    ``hazy``/``clear`` (and ``depth``) [3|1, crop, crop] float32 tensors, ``index``, and for a
    synthetic sample ``seed`` (the torch seed of its haze draw, made on the device by the loop).
    """

    def __init__(self, items, kind="pairs", *, crop=128, small="pad", flip=True, rot90=True, seed=0,
                 with_depth=False):
        self.items, self.kind, self.crop, self.small = list(items), kind, crop, small
        self.flip, self.rot90, self.seed, self.with_depth = flip, rot90, seed, with_depth
        self.epoch = 0

    def set_epoch(self, epoch: int):
        self.epoch = int(epoch)

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        rng = np.random.default_rng([self.seed, self.epoch, int(i)])
        paths = self.items[i]
        try:
            if self.kind == "synth":
                tensors = [load_rgb(paths[0]), _load_depth(paths[1])]
                if tensors[1].shape[-2:] != tensors[0].shape[-2:]:
                    tensors[1] = torch.nn.functional.interpolate(tensors[1][None], size=tensors[0].shape[-2:],
                                                                 mode="bilinear", align_corners=False)[0]
                names = ("clear", "depth")
            else:
                tensors = [load_rgb(paths[0]), load_rgb(paths[1])]
                names = ("hazy", "clear")
                if self.with_depth:
                    d = _load_depth(paths[2])
                    if d.shape[-2:] != tensors[1].shape[-2:]:
                        d = torch.nn.functional.interpolate(d[None], size=tensors[1].shape[-2:], mode="bilinear",
                                                            align_corners=False)[0]
                    tensors.append(d)
                    names = names + ("depth",)
                if tensors[0].shape != tensors[1].shape:
                    tensors[1] = _center_crop(tensors[1], tensors[0].shape[-2:], paths[1])
                    if self.with_depth:
                        tensors[2] = _center_crop(tensors[2], tensors[0].shape[-2:], paths[2])
        except (ValueError, OSError) as e:
            msg = " ".join(str(e).split())
            named = any(str(p) in msg for p in paths)
            return {"bad": msg if named else f"{paths[0]}: {msg}", "index": int(i)}
        out = _augment(tensors, rng, self.crop, self.small, self.flip, self.rot90)
        if out is None:
            return {"small": paths[0], "index": int(i)}
        sample = dict(zip(names, out))
        sample["index"] = int(i)
        if self.kind == "synth":
            sample["seed"] = int(rng.integers(0, 2 ** 62))
        return sample


def _center_crop(x, hw, path):
    dh, dw = x.shape[-2] - hw[0], x.shape[-1] - hw[1]
    if dh < 0 or dw < 0:
        raise ValueError(f"{path}: clear image {tuple(x.shape[-2:])} smaller than its hazy image {tuple(hw)}")
    return x[:, dh // 2: dh // 2 + hw[0], dw // 2: dw // 2 + hw[1]]


class PairsDataset(torch.utils.data.Dataset):
    """Validation pairs at full resolution (a larger ground truth, as SOTS's 640x480 against the
    620x460 hazy image, is cropped evenly to the hazy size)."""

    def __init__(self, root, limit=0, include=()):
        self.items = find_pairs(root)
        if include:
            self.items = select_scenes(self.items, include=include, what="data.val_include")
        if limit:
            self.items = self.items[:limit]

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        h, c = self.items[i]
        try:
            hazy, clear = load_rgb(h), load_rgb(c)
            if clear.shape != hazy.shape:
                clear = _center_crop(clear, hazy.shape[-2:], c)
        except (ValueError, OSError) as e:
            return {"bad": " ".join(str(e).split()), "index": i}
        return {"hazy": hazy, "clear": clear, "index": i, "name": pathlib.Path(h).stem}


def select_scenes(items, include=(), exclude=(), what="data.train_exclude", clear_index=1):
    """The items whose clear image's stem (``item[clear_index]``: 1 for (hazy, clear, ...), 0 for
    (clear, depth)) is in ``include`` (when given) and not in ``exclude``. Raises ValueError
    naming ``what`` when a listed stem matches no clear image."""
    stems = {pathlib.Path(it[clear_index]).stem for it in items}
    listed = list(include) + list(exclude)
    missing = [s for s in listed if s not in stems]
    if missing:
        raise ValueError(f"{what}: no clear image has the stem {missing[0]!r} "
                         f"(stems: {', '.join(sorted(stems)[:8])}{', ...' if len(stems) > 8 else ''})")
    inc, exc = set(include), set(exclude)
    return [it for it in items if (not inc or pathlib.Path(it[clear_index]).stem in inc)
            and pathlib.Path(it[clear_index]).stem not in exc]


def collate(samples):
    """Stack the good samples; ``bad`` lists the messages of corrupt ones, ``small`` skipped paths.
    (Whole images, data.crop = 0, are checked for one size before training, by the loop.)"""
    good = [s for s in samples if "bad" not in s and "small" not in s]
    batch = {"bad": [s["bad"] for s in samples if "bad" in s], "small": [s["small"] for s in samples if "small" in s],
             "index": [s["index"] for s in samples], "n": len(good)}
    if good:
        for k in good[0]:
            if k == "index":
                continue
            v = [s[k] for s in good]
            batch[k] = torch.stack(v) if isinstance(v[0], torch.Tensor) else v
    return batch


class SkipSampler(torch.utils.data.Sampler):
    """The indices of ``sampler`` (a DistributedSampler) for the current epoch after the first ``skip``."""

    def __init__(self, sampler, skip=0):
        self.sampler, self.skip = sampler, int(skip)

    def __iter__(self):
        it = iter(self.sampler)
        for _ in range(self.skip):
            next(it, None)
        return it

    def __len__(self):
        return max(0, len(self.sampler) - self.skip)


def worker_init(_worker_id):
    """DataLoader workers ignore SIGINT (Ctrl-C goes to the main process, which finishes the step,
    saves and exits) and use one thread; they need no seed (draws come from (seed, epoch, index))."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    torch.set_num_threads(1)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
