"""Build script for fastdehaze.

Extensions (one pair per op family, so that a family can be rebuilt alone):

* ``fastdehaze._C_<family>``: schemas (csrc/schemas/<family>.cpp) and the C++ CPU kernels
  (csrc/cpu/<family>.cpp). Always built.
* ``fastdehaze._cuda_<family>``: CUDA kernels (csrc/cuda/<family>.cu, plain CUDA with pointer
  launchers) and their dispatcher registration (csrc/cuda/<family>_register.cpp). Built when
  CUDA is usable (torch CUDA build + toolkit) or when ``FORCE_CUDA=1``.

Environment:
  FORCE_CUDA=1            build the CUDA extensions even without a visible GPU
  FASTDEHAZE_NO_CUDA=1    never build them
  TORCH_CUDA_ARCH_LIST    target architectures (default here: "9.0" when nothing is set)
  MAX_JOBS                parallel compile jobs (read by torch's ninja builder)
  FASTDEHAZE_FAMILIES     comma list restricting which families are built (development);
                          "none" builds no extension (the package metadata only: scripts/setup.sh
                          installs that with pip, then builds the families in parallel with
                          scripts/build_ext.py)
  FASTDEHAZE_PARTS        "cpu", "cuda" or "cpu,cuda" (default): which of each family's two
                          extensions to build (scripts/build_ext.py --split builds them in two
                          processes on many-core machines)
  FASTDEHAZE_CPU_FLAGS    extra C++ flags for the CPU kernels (default: -march=native on x86-64)
"""
import glob
import os
import platform
import shutil
import sys

from setuptools import find_packages, setup

ROOT = os.path.dirname(os.path.abspath(__file__))


def _families():
    fams = sorted(os.path.splitext(os.path.basename(p))[0] for p in glob.glob(os.path.join(ROOT, "csrc", "schemas", "*.cpp")))
    only = os.environ.get("FASTDEHAZE_FAMILIES")
    if only:
        want = {f.strip() for f in only.split(",") if f.strip()}
        fams = [f for f in fams if f in want]
    return fams


def _want_cuda(torch):
    if os.environ.get("FASTDEHAZE_NO_CUDA") == "1":
        return False, "FASTDEHAZE_NO_CUDA=1"
    force = os.environ.get("FORCE_CUDA") == "1"
    if torch.version.cuda is None:
        if force:
            sys.exit("fastdehaze: FORCE_CUDA=1 but this torch (%s) is a CPU-only build; install a CUDA build of torch." % torch.__version__)
        return False, "torch is a CPU-only build"
    from torch.utils.cpp_extension import CUDA_HOME
    nvcc = os.path.join(CUDA_HOME, "bin", "nvcc") if CUDA_HOME else None
    if not nvcc or not os.path.exists(nvcc):
        msg = ("fastdehaze: no CUDA toolkit found (CUDA_HOME=%r). Set CUDA_HOME to the folder holding "
               "bin/nvcc and include/, or unset FORCE_CUDA to build the CPU backend only." % CUDA_HOME)
        if force:
            sys.exit(msg)
        return False, "no CUDA toolkit (set CUDA_HOME)"
    if force:
        return True, "FORCE_CUDA=1"
    if torch.cuda.is_available():
        return True, "CUDA device visible"
    return False, "no CUDA device visible (set FORCE_CUDA=1 to build anyway)"


def _extensions():
    import torch
    from torch.utils.cpp_extension import CppExtension, CUDAExtension

    inc = [os.path.join(ROOT, "csrc", "include")]
    cxx = ["-O3", "-std=c++20", "-fvisibility=hidden"]
    cpu_flags = os.environ.get("FASTDEHAZE_CPU_FLAGS")
    if cpu_flags is None:
        cpu_flags = "-march=native" if platform.machine() in ("x86_64", "AMD64") else ""
    cxx += cpu_flags.split()
    if sys.platform != "win32":
        cxx.append("-fopenmp")
    exts = []
    fams = _families()
    # setuptools rebuilds an extension only when a file of sources + depends is newer than its .so;
    # ninja then recompiles only the objects whose depfile names a changed header (or whose
    # command line changed), so headers and setup.py (flags) go into depends.
    depends = sorted(glob.glob(os.path.join(ROOT, "csrc", "include", "**", "*.h"), recursive=True)
                     + glob.glob(os.path.join(ROOT, "csrc", "cuda", "*.cuh")) + [os.path.join(ROOT, "setup.py")])
    parts = {p.strip() for p in os.environ.get("FASTDEHAZE_PARTS", "cpu,cuda").split(",")}
    for fam in (fams if "cpu" in parts else []):
        srcs = [f"csrc/schemas/{fam}.cpp"] + ([f"csrc/cpu/{fam}.cpp"] if os.path.exists(os.path.join(ROOT, "csrc", "cpu", f"{fam}.cpp")) else [])
        exts.append(CppExtension(f"fastdehaze._C_{fam}", srcs, include_dirs=inc, depends=depends,
                                 extra_compile_args={"cxx": cxx}, extra_link_args=["-fopenmp"]))
    use_cuda, why = _want_cuda(torch) if "cuda" in parts else (False, "FASTDEHAZE_PARTS=" + ",".join(sorted(parts)))
    print(f"fastdehaze: CUDA extensions {'ON' if use_cuda else 'OFF'} ({why}); families: {', '.join(fams)}")
    if use_cuda:
        os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "9.0")
        cuda_inc = list(inc)
        try:  # cusparse.h & co. live in the torch wheel's nvidia folder (only needed by ATen/cuda headers)
            import nvidia
            for base in nvidia.__path__:
                cuda_inc += glob.glob(os.path.join(base, "cu*", "include"))
        except ImportError:
            pass
        for fam in fams:
            cu = f"csrc/cuda/{fam}.cu"
            reg = f"csrc/cuda/{fam}_register.cpp"
            if not (os.path.exists(os.path.join(ROOT, cu)) and os.path.exists(os.path.join(ROOT, reg))):
                continue
            exts.append(CUDAExtension(
                f"fastdehaze._cuda_{fam}", [cu, reg], include_dirs=cuda_inc, depends=depends,
                extra_compile_args={"cxx": ["-O3", "-std=c++20", "-fvisibility=hidden"],
                                    "nvcc": ["-O3", "-std=c++17", "-fmad=true", "-lineinfo"]}))
    return exts


def _cmdclass():
    from torch.utils.cpp_extension import BuildExtension
    return {"build_ext": BuildExtension.with_options(use_ninja=shutil.which("ninja") is not None or _has_ninja_module())}


def _has_ninja_module():
    try:
        import ninja  # noqa: F401
        return True
    except ImportError:
        return False


setup(
    name="fastdehaze",
    version="0.1.0",
    description="Fused CPU/CUDA/Triton kernels for single-image dehazing (ASM, dark channel prior, contrastive and depth losses)",
    packages=find_packages(include=["fastdehaze", "fastdehaze.*"]) + ["fastdehaze.kernels"],
    package_dir={"fastdehaze.kernels": "kernels"},
    package_data={"fastdehaze": ["models/*.safetensors"]},
    ext_modules=_extensions(),
    cmdclass=_cmdclass(),
    python_requires=">=3.10",
    install_requires=["torch>=2.11,<2.15", "numpy", "pillow", "tqdm", "safetensors", "torchmetrics", "matplotlib"],
    extras_require={
        "test": ["pytest", "pytest-benchmark", "scikit-image", "opencv-python-headless"],
        "triton": ["triton"],
        "tensorboard": ["tensorboard"],
    },
    entry_points={"console_scripts": ["fastdehaze=fastdehaze.cli:main"]},
    zip_safe=False,
)
