"""The run folder's logs: metrics.jsonl, plot.png, validation samples, optional TensorBoard."""
from __future__ import annotations

import json
import pathlib

import numpy as np
import torch

__all__ = ["MetricsLog", "write_sample"]


class MetricsLog:
    """Appends JSON lines to ``metrics.jsonl`` (``{"step": .., "loss": ..}`` training lines,
    ``{"step": .., "val_psnr": .., "val_ssim": ..}`` validation lines, ``{"event": ..}`` notes)
    and redraws ``plot.png`` (training loss and validation PSNR against step) on each validation."""

    def __init__(self, run_dir, tensorboard=False):
        self.dir = pathlib.Path(run_dir)
        self.path = self.dir / "metrics.jsonl"
        self.tb = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError as e:
                raise ValueError("run.tensorboard: the tensorboard package is not installed "
                                 "(pip install tensorboard, or fastdehaze[tensorboard])") from e
            self.tb = SummaryWriter(str(self.dir / "tensorboard"))

    def write(self, row: dict):
        with open(self.path, "a") as f:
            f.write(json.dumps(row) + "\n")
        if self.tb is not None and "step" in row:
            for k, v in row.items():
                if k != "step" and isinstance(v, (int, float)):
                    self.tb.add_scalar(k, v, row["step"])

    def rows(self):
        if not self.path.exists():
            return []
        out = []
        for line in self.path.read_text().splitlines():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                pass
        return out

    def plot(self):
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        rows = self.rows()
        tr = [(r["step"], r["loss"]) for r in rows if "loss" in r]
        va = [(r["step"], r["val_psnr"]) for r in rows if "val_psnr" in r]
        fig, ax = plt.subplots(1, 2, figsize=(9, 3.2))
        if tr:
            ax[0].plot(*zip(*tr))
            ax[0].set_yscale("log")
        ax[0].set_xlabel("step")
        ax[0].set_ylabel("training loss")
        if va:
            ax[1].plot(*zip(*va), marker="o")
        ax[1].set_xlabel("step")
        ax[1].set_ylabel("validation PSNR (dB)")
        fig.tight_layout()
        tmp = self.dir / ".plot.png.tmp"
        fig.savefig(tmp, format="png", dpi=80)
        plt.close(fig)
        tmp.replace(self.dir / "plot.png")

    def close(self):
        if self.tb is not None:
            self.tb.close()


def write_sample(path, hazy, output, clear):
    """One PNG of hazy | output | clear side by side ([3,H,W] tensors in [0, 1])."""
    from PIL import Image
    row = torch.cat([hazy, output.clamp(0, 1), clear], -1)
    a = (row.float().cpu().permute(1, 2, 0).numpy() * 255 + 0.5).clip(0, 255).astype(np.uint8)
    pathlib.Path(path).parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(a).save(path)
