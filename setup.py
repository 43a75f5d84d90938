"""Builds edlm and its extension edlm._C against the torch already installed.

CPU kernels are compiled once per instruction set (DEFAULT, AVX2, AVX512) and picked at run time; CUDA
kernels are added when torch has CUDA and nvcc is found (EDLM_CUDA=0/1 overrides). Sources are
listed in csrc/sources.txt, which CMakeLists.txt reads too.
"""

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

from setuptools import find_packages, setup

ROOT = Path(__file__).resolve().parent

try:
    import torch
    from torch.utils import cpp_extension
except ImportError:
    # Plain `pip install .` gets here only when the environment being installed into has no torch
    # (scripts/build_backend.py lends the build that environment's torch).
    sys.exit(
        f"edlm: torch is not installed in {sys.prefix}. edlm compiles its extension against the\n"
        "torch it will run with, so install torch into this environment first, then edlm:\n"
        "    pip install torch --index-url https://download.pytorch.org/whl/cpu     # CPU\n"
        "    pip install torch --index-url https://download.pytorch.org/whl/cu130   # CUDA 13.0\n"
        "    pip install .\n"
        "(or `bash scripts/bootstrap.sh`, which does both in .venv)."
    )

ISA_FLAGS = {
    "DEFAULT": ["-DCPU_CAPABILITY=DEFAULT", "-DCPU_CAPABILITY_DEFAULT"],
    "AVX2": ["-DCPU_CAPABILITY=AVX2", "-DCPU_CAPABILITY_AVX2", "-mavx2", "-mfma", "-mf16c"],
    "AVX512": [
        "-DCPU_CAPABILITY=AVX512",
        "-DCPU_CAPABILITY_AVX512",
        "-mavx512f",
        "-mavx512bw",
        "-mavx512vl",
        "-mavx512dq",
        "-mavx2",
        "-mfma",
        "-mf16c",
    ],
}
CXX_FLAGS = ["-O3", "-fopenmp", "-fvisibility=hidden"]


def read_sources():
    kinds = {"common": [], "isa": [], "cuda": []}
    for line in (ROOT / "csrc" / "sources.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            kind, path = line.split()
            kinds[kind].append(path)
    return kinds


def cuda_toolkit_root():
    """The CUDA toolkit root, or None: torch's CUDA_HOME when it holds the headers, else the TOP
    that nvcc reports (the nvcc on PATH may be a wrapper script outside the toolkit)."""
    home = cpp_extension.CUDA_HOME
    if home and (Path(home) / "include" / "cuda_runtime.h").is_file():
        return home
    nvcc = shutil.which("nvcc")
    if nvcc is None:
        return None
    try:
        out = subprocess.run(
            [nvcc, "--dryrun", "-x", "cu", "-c", os.devnull, "-o", os.devnull],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    match = re.search(r"^#\$ TOP=(.+)$", out.stdout + out.stderr, re.MULTILINE)
    if match is None:
        return None
    top = os.path.realpath(match.group(1).strip())
    return top if (Path(top) / "include" / "cuda_runtime.h").is_file() else None


def want_cuda(cuda_sources):
    flag = os.environ.get("EDLM_CUDA", "")
    if flag not in ("", "0", "1"):
        sys.exit(f"edlm: EDLM_CUDA must be 0 or 1, got {flag!r}")
    if flag == "0" or not cuda_sources:
        return False
    root = cuda_toolkit_root() if torch.version.cuda is not None else None
    if root is None:
        if flag == "1":
            sys.exit(
                "edlm: EDLM_CUDA=1 but CUDA cannot be built here: torch.version.cuda = "
                f"{torch.version.cuda}, CUDA_HOME = {cpp_extension.CUDA_HOME} (set CUDA_HOME to the "
                "toolkit root, the folder with bin/nvcc and include/cuda_runtime.h)"
            )
        return False
    # cpp_extension reads its module-level CUDA_HOME when it builds: point it at the real root.
    cpp_extension.CUDA_HOME = os.environ["CUDA_HOME"] = root
    return True


def torch_cuda_include_dirs():
    """Header folders of torch's CUDA pip packages (nvidia/cu13/include, ...): ATen's CUDA headers
    include cuBLAS, cuSPARSE and cuSOLVER headers that a bare toolkit may lack."""
    nvidia = Path(torch.__file__).resolve().parent.parent / "nvidia"
    dirs = sorted(nvidia.glob("cu[0-9]*/include")) or sorted(nvidia.glob("*/include"))
    return [str(d) for d in dirs if d.is_dir()]


class BuildExt(cpp_extension.BuildExtension):
    """Compiles the `isa` sources once per instruction set, then links them into the extension."""

    def build_extension(self, ext):
        cxx = list(ext.extra_compile_args["cxx"])
        for isa, flags in ISA_FLAGS.items():
            out = os.path.join(self.build_temp, "isa", isa.lower())
            objects = self.compiler.compile(
                ext.isa_sources,
                output_dir=out,
                include_dirs=ext.include_dirs,
                extra_postargs={"cxx": cxx + flags, "nvcc": []} if ext.with_cuda else cxx + flags,
            )
            ext.extra_objects.extend(objects)
        super().build_extension(ext)


def make_extension():
    sources = read_sources()
    with_cuda = want_cuda(sources["cuda"])
    kwargs = dict(
        name="edlm._C",
        sources=sources["common"] + (sources["cuda"] if with_cuda else []),
        include_dirs=[str(ROOT / "csrc")],
        extra_compile_args={"cxx": CXX_FLAGS + (["-DEDLM_WITH_CUDA"] if with_cuda else [])},
        extra_link_args=["-fopenmp"],
    )
    if with_cuda:
        # Ampere and Hopper (plus PTX for newer cards) unless the user chose.
        if not os.environ.get("TORCH_CUDA_ARCH_LIST"):
            os.environ["TORCH_CUDA_ARCH_LIST"] = "8.0;9.0+PTX"
        # -isystem: searched after the toolkit's own -I folders, so toolkit headers win.
        system_includes = [f for d in torch_cuda_include_dirs() for f in ("-isystem", d)]
        kwargs["extra_compile_args"]["nvcc"] = [
            "-O3",
            "-DEDLM_WITH_CUDA",
            "--use_fast_math",
            *system_includes,
        ]
        ext = cpp_extension.CUDAExtension(**kwargs)
    else:
        ext = cpp_extension.CppExtension(**kwargs)
    ext.isa_sources = sources["isa"]
    ext.with_cuda = with_cuda
    return ext


setup(
    packages=find_packages("python"),
    package_dir={"": "python"},
    ext_modules=[make_extension()],
    cmdclass={"build_ext": BuildExt},
)
