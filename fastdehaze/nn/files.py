"""Model files: a trained network's weights and architecture in one safetensors file.

Format (``.safetensors``, https://github.com/huggingface/safetensors): the tensors of the model's
``state_dict()`` (parameters and persistent buffers, contiguous, little-endian), and in the
header's string-to-string ``__metadata__``:

====================== ==================================================================
key                    value
====================== ==================================================================
``format``             ``"fastdehaze-model/1"``
``spec``               JSON ``{"name": ..., "args": {...}}``: the architecture (see below)
``fastdehaze_version`` the version that wrote the file
``value_range``        JSON ``[lo, hi]``: the input/output value range (``[0.0, 1.0]``)
``pad_multiple``       JSON int: sizes the network works on unpadded (1: any)
``receptive_field``    JSON int or ``null``: pixels of input that influence one output pixel
``training``           JSON object: free-form training metadata (``metadata=`` of save_model)
``sha256``             hex SHA-256 of the tensors and of the other metadata entries
====================== ==================================================================

``spec`` names a built-in class of :data:`fastdehaze.nn.ARCHITECTURES` (``"UNet"``) with its
``config()`` as ``args``; sub-modules are nested specs. A user's own class is written as
``"package.module:Class"``; loading it imports that module, i.e. runs its code, so
:func:`load_model` / :func:`build_model` refuse it unless ``trust_code=True``. The weights
themselves are never code: safetensors holds raw arrays (unlike ``torch.load`` of a pickle).

The SHA-256 covers, in this order, for every tensor in sorted name order its name, dtype,
shape and raw bytes, then every metadata entry but ``sha256`` in sorted key order. It catches
corruption and edits (a truncated download, a flipped bit, a weight or header changed by hand):
it does **not** protect against forgery, since anyone who edits a file can recompute the hash.
Trust a model file as you trust its source.
"""
from __future__ import annotations

import hashlib
import importlib
import json
import os
import tempfile
from typing import Any, Dict, List, Optional

import torch
from torch import nn

__all__ = ["save_model", "load_model", "model_spec", "build_model", "list_models", "model_info",
           "ModelFileError", "MODEL_FORMAT"]

MODEL_FORMAT = "fastdehaze-model/1"
_SUFFIX = ".safetensors"


class ModelFileError(ValueError):
    """A model file that cannot be loaded: truncated, corrupt, edited (hash mismatch), missing
    tensors, or weights that do not fit the architecture it names. The message names the file."""


# ---- architecture specs -------------------------------------------------------------------------

def _architectures() -> Dict[str, type]:
    """The registry of built-in model classes (``fastdehaze.nn.ARCHITECTURES``), {} until it exists."""
    try:
        from .bases import ARCHITECTURES
    except ModuleNotFoundError as e:
        if e.name != f"{__package__}.bases":
            raise
        return {}
    return ARCHITECTURES


def _unwrap(model):
    """The module inside torch.compile (``_orig_mod``) and DDP / DataParallel (``module``) wrappers."""
    while True:
        if hasattr(model, "_orig_mod") and isinstance(model._orig_mod, nn.Module):
            model = model._orig_mod
        elif isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
            model = model.module
        else:
            return model


def _is_spec(v) -> bool:
    return isinstance(v, dict) and set(v) == {"name", "args"} and isinstance(v["name"], str)


def _json_arg(v, where: str):
    """A config value as JSON: modules become nested specs; anything else must be JSON data."""
    if isinstance(v, nn.Module):
        return model_spec(v)
    if isinstance(v, dict):
        return {str(k): _json_arg(x, f"{where}.{k}") for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_json_arg(x, f"{where}[{i}]") for i, x in enumerate(v)]
    if v is None or isinstance(v, (bool, int, str)):
        return v
    if isinstance(v, float):
        if v != v or v in (float("inf"), float("-inf")):
            raise ValueError(f"{where} is {v}: a model config must hold finite numbers")
        return v
    raise TypeError(f"{where} must be JSON data (None, bool, int, float, str, list, dict) or a module, "
                    f"got {type(v).__name__}")


def model_spec(model: nn.Module) -> dict:
    """The architecture of ``model`` as ``{"name": str, "args": dict}`` (JSON-serialisable).

    ``name`` is the class name for a built-in class (one of :data:`fastdehaze.nn.ARCHITECTURES`),
    else ``"module:QualName"`` of the model's class. ``args`` is ``model.config()`` when the class
    has one (sub-modules in it become nested specs), else ``{}`` (the class is then rebuilt with
    no arguments). torch.compile and DDP wrappers are looked through.

    Raises:
        TypeError: ``model`` is not an nn.Module, or its config holds a value that is not JSON data.
        ValueError: a class that cannot be imported by name later (defined in ``__main__`` or
            inside a function), or a non-finite float in the config.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    model = _unwrap(model)
    cls = type(model)
    if _architectures().get(cls.__name__) is cls:
        name = cls.__name__
    else:
        if cls.__module__ == "__main__" or "<locals>" in cls.__qualname__:
            raise ValueError(f"model: class {cls.__qualname__} is defined in "
                             f"{'__main__' if cls.__module__ == '__main__' else 'a function'} and could not be "
                             "imported by name when the file is loaded; define it in an importable module")
        name = f"{cls.__module__}:{cls.__qualname__}"
    config = model.config() if callable(getattr(model, "config", None)) else {}
    if not isinstance(config, dict):
        raise TypeError(f"model.config() must return a dict, got {type(config).__name__}")
    args = {str(k): _json_arg(v, f"model.config()[{k!r}]") for k, v in config.items()}
    return {"name": name, "args": args}


def _import_class(name: str, trust_code: bool) -> type:
    mod_name, _, qual = name.partition(":")
    if not mod_name or not qual:
        raise ValueError(f"spec name {name!r}: a user class must be written 'package.module:Class'")
    if not trust_code:
        raise ValueError(f"the model names the class {name!r}: building it imports the module {mod_name!r}, which "
                         "runs its code. Only if you trust the file and that module, allow it with "
                         "trust_code=True (load_model(..., trust_code=True); on the command line --trust-code)")
    try:
        obj = importlib.import_module(mod_name)
    except ImportError as e:
        raise ValueError(f"spec name {name!r}: cannot import module {mod_name!r} ({e})") from None
    for part in qual.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            raise ValueError(f"spec name {name!r}: module {mod_name!r} has no {qual!r}")
    if not (isinstance(obj, type) and issubclass(obj, nn.Module)):
        raise ValueError(f"spec name {name!r} is not an nn.Module class")
    return obj


def build_model(spec: dict, trust_code: bool = False) -> nn.Module:
    """A freshly initialised model from a spec ``{"name": ..., "args": {...}}`` (see :func:`model_spec`).

    Nested specs in ``args`` are built first (with the same ``trust_code``) and passed as modules.

    Args:
        spec: the architecture; ``name`` a key of :data:`fastdehaze.nn.ARCHITECTURES` or
            ``"package.module:Class"``.
        trust_code: allow importing the module of a ``"module:Class"`` name (that runs its code).

    Raises:
        ValueError: a malformed spec, an unknown built-in name (the message lists them), a
            ``module:Class`` name without ``trust_code=True`` (the message says how to allow it),
            a class that cannot be imported, or a constructor that rejects the arguments.
    """
    if not _is_spec(spec) or not isinstance(spec["args"], dict):
        raise ValueError(f"spec must be a dict {{'name': str, 'args': dict}}, got {spec!r}")
    name = spec["name"]
    if ":" in name:
        cls = _import_class(name, trust_code)
    else:
        arch = _architectures()
        if name not in arch:
            raise ValueError(f"spec name {name!r} is not a built-in architecture (built-in: "
                             f"{', '.join(sorted(arch)) or 'none yet'}; a user class is 'package.module:Class')")
        cls = arch[name]

    def resolve(v):
        if _is_spec(v):
            return build_model(v, trust_code)
        if isinstance(v, dict):
            return {k: resolve(x) for k, x in v.items()}
        if isinstance(v, list):
            return [resolve(x) for x in v]
        return v

    args = {k: resolve(v) for k, v in spec["args"].items()}
    try:
        return cls(**args)
    except (TypeError, ValueError) as e:
        raise ValueError(f"spec {name!r}: the constructor rejected args {spec['args']!r}: {e}") from None


# ---- hashing --------------------------------------------------------------------------------------

def _digest(tensors: Dict[str, torch.Tensor], metadata: Dict[str, str]) -> str:
    h = hashlib.sha256()
    for k in sorted(tensors):
        t = tensors[k]
        h.update(k.encode() + b"\0" + str(t.dtype).encode() + b"\0" + json.dumps(list(t.shape)).encode() + b"\0")
        if t.numel():
            h.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    for k in sorted(metadata):
        if k != "sha256":
            h.update(b"\1" + k.encode() + b"\0" + metadata[k].encode())
    return h.hexdigest()


# ---- save -----------------------------------------------------------------------------------------

def _declared(model, name, default):
    v = getattr(model, name, default)
    return v() if callable(v) else v


def save_model(model: nn.Module, path, metadata: Optional[dict] = None) -> None:
    """Write ``model`` (weights and architecture) to the safetensors file ``path``.

    The file is written atomically (a temporary file in the same folder, fsync, rename): a
    reader never sees half a file. Before writing, the spec is checked to rebuild the same
    architecture (same state-dict names and shapes; global RNG state untouched), so a wrong
    ``config()`` is an error now, not when the file is loaded.

    Args:
        model: any nn.Module (torch.compile / DDP wrappers are looked through). Its
            ``value_range`` (default (0, 1)), ``pad_multiple`` (default 1) and
            ``receptive_field`` (default None: unknown, the model is then never tiled) are stored.
        path: the file to write (``.safetensors`` by convention); an existing file is replaced.
        metadata: free-form training metadata, a JSON-serialisable dict (data, losses, steps,
            metrics, ...); ``None`` for none.

    Raises:
        TypeError: model not a module, metadata not a dict or not JSON-serialisable.
        ValueError: a class that cannot be rebuilt from its spec (see :func:`model_spec`).
    """
    from safetensors.torch import save
    import fastdehaze

    model = _unwrap(model)
    spec = model_spec(model)
    if metadata is None:
        metadata = {}
    if not isinstance(metadata, dict):
        raise TypeError(f"metadata must be a dict or None, got {type(metadata).__name__}")
    try:
        training = json.dumps(metadata, allow_nan=False, sort_keys=True)
    except (TypeError, ValueError) as e:
        raise TypeError(f"metadata must be JSON-serialisable (finite numbers): {e}") from None
    state = {k: v.detach().to("cpu", copy=True).contiguous() for k, v in model.state_dict().items()}
    with torch.random.fork_rng(devices=[]):
        try:
            fresh = build_model(spec, trust_code=True)
        except ValueError as e:
            raise ValueError(f"model: its spec does not rebuild it: {e}") from None
    _check_fits(fresh, state, "model", "the spec from model_spec(model) rebuilds a different architecture")
    vr = tuple(float(x) for x in _declared(model, "value_range", (0.0, 1.0)))
    rf = _declared(model, "receptive_field", None)
    meta = {
        "format": MODEL_FORMAT,
        "spec": json.dumps(spec, sort_keys=True),
        "fastdehaze_version": fastdehaze.__version__,
        "value_range": json.dumps(list(vr)),
        "pad_multiple": json.dumps(int(_declared(model, "pad_multiple", 1))),
        "receptive_field": json.dumps(None if rf is None else int(rf)),
        "training": training,
    }
    meta["sha256"] = _digest(state, meta)
    data = save(state, metadata=meta)
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


# ---- load -----------------------------------------------------------------------------------------

def _models_dir() -> str:
    return os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "models")


def list_models() -> List[str]:
    """Names of the trained models shipped inside the package (``fastdehaze/models/*.safetensors``),
    sorted; each works as ``load_model(name)`` and ``fastdehaze dehaze --model NAME``. Empty when
    none ships."""
    d = _models_dir()
    if not os.path.isdir(d):
        return []
    return sorted(n[:-len(_SUFFIX)] for n in os.listdir(d) if n.endswith(_SUFFIX) and os.path.isfile(os.path.join(d, n)))


def _resolve(path_or_name) -> str:
    p = os.fspath(path_or_name)
    if os.path.isfile(p):
        return p
    if p in list_models():
        return os.path.join(_models_dir(), p + _SUFFIX)
    if os.path.exists(p):
        raise ModelFileError(f"{p}: not a file")
    names = list_models()
    raise ValueError(f"model {p!r}: no such file, and not the name of a shipped model (shipped: "
                     f"{', '.join(names) if names else 'none yet'}; see list_models() or `python3 -m fastdehaze models`)")


def _read(path: str, map_location="cpu"):
    """(tensors, metadata) of a model file, hash verified; ModelFileError naming ``path`` otherwise."""
    from safetensors import safe_open
    size = os.path.getsize(path)
    try:
        with safe_open(path, framework="pt", device="cpu") as f:
            meta = dict(f.metadata() or {})
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:  # safetensors raises SafetensorError / OSError / ValueError; never a partial load
        raise ModelFileError(f"{path}: not a readable safetensors file ({size} bytes; truncated or corrupt?): "
                             f"{type(e).__name__}: {e}") from None
    fmt = meta.get("format")
    if fmt != MODEL_FORMAT:
        raise ModelFileError(f"{path}: not a fastdehaze model file (metadata 'format' is {fmt!r}, "
                             f"expected {MODEL_FORMAT!r})")
    missing = [k for k in ("spec", "sha256", "value_range", "pad_multiple", "receptive_field", "training")
               if k not in meta]
    if missing:
        raise ModelFileError(f"{path}: metadata lacks {', '.join(missing)} (edited or corrupt file)")
    if _digest(tensors, meta) != meta["sha256"]:
        raise ModelFileError(f"{path}: SHA-256 mismatch: the tensors or metadata were changed after the file "
                             "was written (corrupt or edited file)")
    info = {"path": path, "size": size, "format": fmt, "fastdehaze_version": meta.get("fastdehaze_version"),
            "sha256": meta["sha256"]}
    for k in ("spec", "value_range", "pad_multiple", "receptive_field", "training"):
        try:
            info[k] = json.loads(meta[k])
        except ValueError as e:
            raise ModelFileError(f"{path}: metadata {k!r} is not valid JSON: {e}") from None
    if not _is_spec(info["spec"]):
        raise ModelFileError(f"{path}: metadata 'spec' is not {{'name': str, 'args': dict}}: {info['spec']!r}")
    info["tensors"] = len(tensors)
    info["parameters"] = sum(t.numel() for t in tensors.values())
    return tensors, info


def _check_fits(model: nn.Module, tensors: Dict[str, torch.Tensor], where: str, what: str):
    want = model.state_dict()
    missing = sorted(set(want) - set(tensors))
    extra = sorted(set(tensors) - set(want))
    shapes = sorted(k for k in set(want) & set(tensors) if tuple(want[k].shape) != tuple(tensors[k].shape))
    if missing or extra or shapes:
        parts = []
        if missing:
            parts.append(f"missing tensors {missing[:5]}{' ...' if len(missing) > 5 else ''}")
        if extra:
            parts.append(f"unexpected tensors {extra[:5]}{' ...' if len(extra) > 5 else ''}")
        if shapes:
            parts.append("shape mismatch " + ", ".join(
                f"{k}: file {tuple(tensors[k].shape)} vs model {tuple(want[k].shape)}" for k in shapes[:5]))
        raise ModelFileError(f"{where}: {what}: {'; '.join(parts)}")


def model_info(path_or_name) -> dict:
    """What a model file holds, verified (hash checked), without building the model or importing code.

    Returns a dict: path, size (bytes), format, fastdehaze_version, sha256, spec, value_range,
    pad_multiple, receptive_field, training (the free-form metadata), tensors, parameters.

    Raises:
        ValueError: an unknown name (the message lists the shipped models).
        ModelFileError: a truncated, corrupt or edited file.
    """
    return _read(_resolve(path_or_name))[1]


def load_model(path_or_name, trust_code: bool = False, map_location="cpu") -> nn.Module:
    """Load a model file written by :func:`save_model` (or a shipped model by name), in eval mode.

    The file is verified (safetensors structure, the SHA-256 of tensors and metadata), the
    architecture is built fresh from its spec and the weights are loaded strictly (every tensor
    present, no extra one, same shapes): any failure raises before a model is returned, so
    there is never a partially loaded model. Floating tensors stored in one dtype (e.g. a half
    model) give a model of that dtype.

    Args:
        path_or_name: a file path, or one of :func:`list_models`.
        trust_code: allow a spec naming a user class ``"module:Class"`` (imports that module).
        map_location: device to put the model on (default "cpu").

    Returns:
        the nn.Module, in eval mode; ``model.model_file_info`` holds :func:`model_info`'s dict.

    Raises:
        ValueError: an unknown name (listing the shipped ones); a user class without
            ``trust_code=True`` (saying how to allow it); an unknown built-in architecture.
        ModelFileError (a ValueError): truncated / corrupt / edited file, missing or unexpected
            tensors, or shapes that do not fit the architecture; the message names the file.
    """
    path = _resolve(path_or_name)
    tensors, info = _read(path)
    try:
        with torch.random.fork_rng(devices=[]):
            model = build_model(info["spec"], trust_code=trust_code)
    except ModelFileError:
        raise
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from None
    _check_fits(model, tensors, path, f"the weights do not fit the architecture {info['spec']['name']!r}")
    dtypes = {t.dtype for t in tensors.values() if t.is_floating_point()}
    if len(dtypes) == 1 and dtypes != {torch.float32}:
        model = model.to(dtypes.pop())
    try:
        model.load_state_dict(tensors, strict=True)
    except RuntimeError as e:
        raise ModelFileError(f"{path}: the weights do not load into {info['spec']['name']!r}: {e}") from None
    model = model.to(map_location).eval()
    model.model_file_info = info
    return model
