"""The wheel ships the trained model files (package_data): an editable install would hide a
missing entry, so a wheel is built here from the committed tree (no extensions: the metadata
and the Python files only, FASTDEHAZE_FAMILIES=none) and its content checked."""
from __future__ import annotations

import os
import pathlib
import shutil
import subprocess
import sys
import tarfile
import io
import zipfile

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_wheel_ships_the_model_files(tmp_path):
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("needs a git checkout (the wheel is built from the committed tree)")
    tar = subprocess.run(["git", "archive", "HEAD"], cwd=ROOT, capture_output=True, check=True).stdout
    src = tmp_path / "src"
    src.mkdir()
    with tarfile.open(fileobj=io.BytesIO(tar)) as t:
        t.extractall(src, filter="data")
    env = dict(os.environ, FASTDEHAZE_FAMILIES="none")
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                        str(tmp_path / "dist"), str(src)], capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    (whl,) = (tmp_path / "dist").glob("fastdehaze-*.whl")
    committed = sorted(p.name for p in (src / "fastdehaze" / "models").glob("*.safetensors"))
    assert committed, "no model file is committed under fastdehaze/models/"
    with zipfile.ZipFile(whl) as z:
        for name in committed:
            data = z.read(f"fastdehaze/models/{name}")
            assert data == (src / "fastdehaze" / "models" / name).read_bytes(), name
            assert len(data) <= 2 * 1024 * 1024, f"{name}: {len(data)} bytes, over the 2 MB limit"
