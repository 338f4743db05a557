"""The training job's configuration: every key, its type, default and meaning, in one place.

A config is a TOML file (read with the standard library's ``tomllib``) with the sections below;
every key is optional (the default is used). ``python3 -m fastdehaze train --print-config``
prints all of them with their defaults and documentation, as a valid TOML file.
``--set section.key=value`` overrides one key (the value is parsed as a TOML value, and taken
as a string when that fails: ``--set model.base=UNet``, ``--set optim.lr=1e-3``).

An unknown section or key, a value of the wrong type, or a value out of range is a
:class:`ConfigError` (a ValueError) naming the key, e.g. ``optim.lr: must be > 0, got -1``.
"""
from __future__ import annotations

import dataclasses
import json
import tomllib
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

__all__ = ["Config", "ConfigError", "load_config", "config_from_dict", "apply_overrides", "format_config",
           "config_to_dict"]


class ConfigError(ValueError):
    """A bad training configuration; the message names the key."""


def _f(default, doc, *, choices=None, lo=None, lo_open=False, hi=None):
    meta = {"doc": doc, "choices": choices, "lo": lo, "lo_open": lo_open, "hi": hi}
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda d=default: json.loads(json.dumps(d)), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class DataConfig:
    """[data]: the training and validation images."""
    train: List[str] = _f([], "training folders. Each is one of: a pairs folder (hazy/ with gt/ or clear/, "
                              "same stems); the RESIDE ITS layout (clear/<id>.png with hazy/<id>_<anything>.png, "
                              "as ../shared/data/train/sots_indoor); or, with kind = 'synth', a folder of "
                              "clear/ images and depth/ maps (same stems) hazed on the device by HazeSynthesis")
    kind: str = _f("pairs", "'pairs' (hazy/clear pairs or ITS layout) or 'synth' (clear + depth, hazed on the fly)",
                   choices=("pairs", "synth"))
    synth_preset: str = _f("its", "HazeSynthesis preset for kind = 'synth' ('its' or 'ots')", choices=("its", "ots"))
    val: str = _f("", "validation pairs folder (hazy/ and gt/ or clear/), evaluated at full resolution; "
                      "'' = no validation")
    val_limit: int = _f(0, "validate on at most this many pairs (0 = all)", lo=0)
    train_exclude: List[str] = _f([], "clear-image stems (scenes) left out of training, e.g. ['1431', '1433'] "
                                      "(a hazy image is left out with its clear image); a stem matching no "
                                      "clear image is an error")
    val_include: List[str] = _f([], "validate only on the pairs of these clear-image stems ([] = every pair of "
                                    "data.val): with data.val = a training folder and train_exclude = the same "
                                    "list, a held-out-scenes validation")
    crop: int = _f(128, "random crop size in pixels (square); 0 = whole images (every training image must then "
                        "have the same size, as RESIDE's 620x460 SOTS frames do)", lo=0)
    small: str = _f("pad", "images smaller than the crop: 'pad' (reflect) or 'skip' (counted in the log)",
                    choices=("pad", "skip"))
    flip: bool = _f(True, "random horizontal flips")
    rot90: bool = _f(True, "random rotations by multiples of 90 degrees")
    depth: str = _f("", "depth mode: a folder of depth maps named by the clear image's stem (targets of the "
                        "depth network); '' = use model.depth_teacher")
    num_workers: int = _f(2, "DataLoader worker processes per rank (0 = load in the main process)", lo=0)


@dataclass
class ModelConfig:
    """[model]: the network trained (a ProgressiveDehazer around a base network)."""
    base: str = _f("UNet", "the base (ARM) network: a built-in name of fastdehaze.nn.ARCHITECTURES ('UNet', "
                           "'AODNet') or a user's 'package.module:Class' (imported because you named it here)")
    base_args: Dict[str, Any] = _f({}, "constructor arguments of the base, e.g. {width = 16}")
    prm_args: Dict[str, Any] = _f({}, "constructor arguments of the PreRestoreModule")
    base_input: str = _f("j0", "what the base sees: 'j0' or 'i_j0' (see ProgressiveDehazer)", choices=("j0", "i_j0"))
    backend: str = _f("auto", "backend of every fused op (model and losses): auto, reference, cpu, cuda, triton",
                      choices=("auto", "reference", "cpu", "cuda", "triton"))
    depth: bool = _f(False, "DCMPNet depth mode: train a DepthEstimator jointly with DCMPNetLoss")
    depth_teacher: str = _f("", "depth mode without data.depth: a frozen teacher giving the depth of the clear "
                                "image, a fastdehaze model file (.safetensors) or a torch.export .pt2 "
                                "(loaded only with trust_code = true)")
    trust_code: bool = _f(False, "allow a torch.export .pt2 teacher and module:Class names inside model files")


@dataclass
class LossConfig:
    """[loss]: the training objective, sum of weighted terms."""
    l1: float = _f(1.0, "weight of L1(J, clear)", lo=0)
    l1_j0: float = _f(0.0, "weight of L1(J0, clear) on the PRM's first estimate", lo=0)
    contrast: str = _f("none", "contrastive term on VGG19 features: none, contrast (AECR-Net, negative: hazy), "
                               "c2r (C2PNet, negatives: hazy, the fused DCP output, J0), iicl (inter + intra)",
                       choices=("none", "contrast", "c2r", "iicl"))
    contrast_weight: float = _f(0.1, "weight of the contrastive term", lo=0)
    vgg_weights: str = _f("", "local torchvision VGG19 state-dict file for the contrastive term (nothing is "
                              "downloaded)")
    vgg_random_ok: bool = _f(False, "allow a contrastive term with RANDOM VGG19 features when vgg_weights is ''"
                                    " (otherwise refused: random features are not perceptual features)")
    iicl_patch: int = _f(32, "IICL patch size (must be <= data.crop)", lo=1)
    iicl_k: int = _f(2, "IICL bright/dark patches per image", lo=1)
    depth_weight: float = _f(0.1, "depth mode: DCMPNetLoss depth_weight", lo=0)


@dataclass
class OptimConfig:
    """[optim]: optimiser, schedule, precision."""
    optimizer: str = _f("adamw", "adam or adamw", choices=("adam", "adamw"))
    lr: float = _f(2e-4, "peak learning rate for the GLOBAL batch (see distributed notes: not rescaled)",
                   lo=0, lo_open=True)
    weight_decay: float = _f(0.0, "weight decay (decoupled for adamw)", lo=0)
    betas: List[float] = _f([0.9, 0.999], "Adam betas")
    warmup_steps: int = _f(0, "linear warm-up steps from 0 to lr", lo=0)
    min_lr_ratio: float = _f(0.01, "cosine decay floor as a fraction of lr", lo=0, hi=1)
    grad_clip: float = _f(1.0, "clip the global gradient norm to this (0 = off)", lo=0)
    amp: str = _f("none", "mixed precision on CUDA: none, bf16, fp16 (fp16 uses torch.amp.GradScaler)",
                  choices=("none", "bf16", "fp16"))
    ema: float = _f(0.0, "EMA decay of the weights (0 = off, e.g. 0.999); saved in checkpoints, exported", lo=0,
                    hi=1)
    compile: bool = _f(False, "torch.compile the model")
    channels_last: bool = _f(False, "channels_last memory format for model and batches")


@dataclass
class RunConfig:
    """[run]: length, logging, checkpoints, device."""
    dir: str = _f("runs/default", "run folder (config.toml, checkpoints/, metrics.jsonl, plot.png, samples/)")
    steps: int = _f(1000, "total optimiser steps", lo=1)
    batch_size: int = _f(8, "GLOBAL batch size (split evenly over the ranks: must be divisible by WORLD_SIZE)",
                         lo=1)
    seed: int = _f(0, "seed of weights, shuffling and every augmentation/haze draw", lo=0)
    device: str = _f("auto", "cpu, cuda or auto (cuda when available; under torchrun each rank uses "
                             "cuda:LOCAL_RANK)")
    log_every: int = _f(10, "log the training loss every N steps", lo=1)
    val_at_start: bool = _f(False, "also validate before the first step (the step-0 baseline)")
    val_every: int = _f(200, "validate every N steps (and at the end; 0 = only at the end)", lo=0)
    ckpt_every: int = _f(200, "write a checkpoint every N steps (and at the end and on SIGINT/SIGTERM)", lo=1)
    keep_last: int = _f(2, "keep this many latest step checkpoints (best.pt is kept apart)", lo=1)
    samples: int = _f(2, "validation sample PNGs (hazy | output | clear) written per validation", lo=0)
    auto_resume: bool = _f(True, "resume from the run folder's latest checkpoint when there is one")
    tensorboard: bool = _f(False, "also write TensorBoard events (needs the tensorboard package)")
    threads: int = _f(0, "torch.set_num_threads per process (0 = leave torch's default)", lo=0)
    pg_timeout_s: float = _f(600.0, "distributed process-group timeout in seconds (collectives that wait "
                                    "longer raise instead of hanging; keep above the validation time)", lo=1)
    stop_at_step: int = _f(0, "stop (checkpoint and exit 0) after this step as if interrupted (0 = off; "
                              "for tests and for splitting a run)", lo=0)


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    run: RunConfig = field(default_factory=RunConfig)


_SECTIONS = {f.name: f.type for f in dataclasses.fields(Config)}


def _section_cls(name):
    return {"data": DataConfig, "model": ModelConfig, "loss": LossConfig, "optim": OptimConfig,
            "run": RunConfig}[name]


def _check(key: str, fld: dataclasses.Field, v):
    t = fld.type if isinstance(fld.type, str) else fld.type.__name__
    m = fld.metadata
    if t == "bool":
        if not isinstance(v, bool):
            raise ConfigError(f"{key}: must be true or false, got {v!r}")
    elif t == "int":
        if isinstance(v, bool) or not isinstance(v, int):
            raise ConfigError(f"{key}: must be an integer, got {v!r}")
    elif t == "float":
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise ConfigError(f"{key}: must be a number, got {v!r}")
        v = float(v)
        if v != v or v in (float("inf"), float("-inf")):
            raise ConfigError(f"{key}: must be finite, got {v!r}")
    elif t == "str":
        if not isinstance(v, str):
            raise ConfigError(f"{key}: must be a string, got {v!r}")
    elif t.startswith("List[str]"):
        if isinstance(v, str):
            v = [v]
        if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
            raise ConfigError(f"{key}: must be a list of strings, got {v!r}")
    elif t.startswith("List[float]"):
        if not isinstance(v, list) or not all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in v):
            raise ConfigError(f"{key}: must be a list of numbers, got {v!r}")
        v = [float(x) for x in v]
    elif t.startswith("Dict"):
        if not isinstance(v, dict):
            raise ConfigError(f"{key}: must be a table, e.g. {{width = 16}}, got {v!r}")
    if m.get("choices") and v not in m["choices"]:
        raise ConfigError(f"{key}: must be one of {', '.join(map(repr, m['choices']))}, got {v!r}")
    lo, hi = m.get("lo"), m.get("hi")
    if lo is not None and (v < lo or (m.get("lo_open") and v == lo)):
        raise ConfigError(f"{key}: must be {'>' if m.get('lo_open') else '>='} {lo}, got {v!r}")
    if hi is not None and v > hi:
        raise ConfigError(f"{key}: must be <= {hi}, got {v!r}")
    return v


def config_from_dict(d: dict) -> Config:
    """A :class:`Config` from a nested dict (a parsed TOML file); unknown keys are errors."""
    if not isinstance(d, dict):
        raise ConfigError(f"config must be a table of sections, got {type(d).__name__}")
    cfg = Config()
    for sec, vals in d.items():
        if sec not in _SECTIONS:
            raise ConfigError(f"{sec}: unknown section (sections: {', '.join(_SECTIONS)})")
        if not isinstance(vals, dict):
            raise ConfigError(f"{sec}: must be a [{sec}] table, got {vals!r}")
        obj = getattr(cfg, sec)
        fields = {f.name: f for f in dataclasses.fields(obj)}
        for k, v in vals.items():
            if k not in fields:
                near = [n for n in fields if n.startswith(k[:3])]
                raise ConfigError(f"{sec}.{k}: unknown key" + (f" (did you mean {', '.join(near)}?)" if near else
                                                              f" (keys of [{sec}]: {', '.join(fields)})"))
            setattr(obj, k, _check(f"{sec}.{k}", fields[k], v))
    _cross_checks(cfg)
    return cfg


def _cross_checks(cfg: Config):
    if len(cfg.optim.betas) != 2 or not all(0 <= b < 1 for b in cfg.optim.betas):
        raise ConfigError(f"optim.betas: must be two numbers in [0, 1), got {cfg.optim.betas}")
    if cfg.loss.contrast == "iicl" and cfg.data.crop and cfg.loss.iicl_patch > cfg.data.crop:
        raise ConfigError(f"loss.iicl_patch: must be <= data.crop ({cfg.data.crop}), got {cfg.loss.iicl_patch}")
    if cfg.data.val_include and not cfg.data.val:
        raise ConfigError("data.val_include: needs data.val (the folder the listed scenes are validated in)")
    if cfg.model.depth and not (cfg.data.depth or cfg.model.depth_teacher):
        raise ConfigError("model.depth: the depth mode needs data.depth (a folder of depth maps) or "
                          "model.depth_teacher (a frozen teacher model file)")
    if cfg.model.depth and cfg.loss.l1 != 1.0:
        raise ConfigError(f"loss.l1: the depth mode uses DCMPNetLoss, whose L1(J, clear) has weight 1; got "
                          f"{cfg.loss.l1} (set loss.l1 = 1)")
    if cfg.data.kind == "synth" and cfg.model.depth and not cfg.model.depth_teacher and not cfg.data.depth:
        raise ConfigError("model.depth_teacher: needed with data.kind = 'synth'")


def config_to_dict(cfg: Config) -> dict:
    return dataclasses.asdict(cfg)


def apply_overrides(d: dict, overrides) -> dict:
    """Apply ``section.key=value`` strings to a nested dict (values parsed as TOML, else strings)."""
    for s in overrides or ():
        if "=" not in s:
            raise ConfigError(f"--set {s!r}: expected section.key=value")
        key, raw = s.split("=", 1)
        key = key.strip()
        parts = key.split(".")
        if len(parts) != 2 or not all(parts):
            raise ConfigError(f"--set {key}: expected section.key (e.g. optim.lr), got {key!r}")
        try:
            value = tomllib.loads(f"v = {raw}")["v"]
        except tomllib.TOMLDecodeError:
            value = raw
        d.setdefault(parts[0], {})
        if not isinstance(d[parts[0]], dict):
            raise ConfigError(f"{parts[0]}: must be a table")
        d[parts[0]][parts[1]] = value
    return d


def load_config(path: Optional[str] = None, overrides=()) -> Config:
    """Read a TOML config file (None: defaults only), apply ``--set`` overrides, validate."""
    d: dict = {}
    if path:
        try:
            with open(path, "rb") as f:
                d = tomllib.load(f)
        except FileNotFoundError:
            raise ConfigError(f"--config: file not found: {path}") from None
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"--config {path}: not valid TOML: {e}") from None
    return config_from_dict(apply_overrides(d, overrides))


def _toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, list):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{k} = {_toml_value(x)}" for k, x in v.items()) + "}"
    raise TypeError(type(v))


def format_config(cfg: Optional[Config] = None, docs: bool = True) -> str:
    """The config as a TOML file (with every key's documentation as comments when ``docs``)."""
    cfg = cfg or Config()
    out = []
    for sec in dataclasses.fields(Config):
        obj = getattr(cfg, sec.name)
        if docs:
            out.append(f"# {type(obj).__doc__}")
        out.append(f"[{sec.name}]")
        for f in dataclasses.fields(obj):
            if docs:
                out.append(f"# {f.metadata['doc']}")
            out.append(f"{f.name} = {_toml_value(getattr(obj, f.name))}")
        out.append("")
    return "\n".join(out)
