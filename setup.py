"""Builds edlm and its extension edlm._C against the torch already installed.

CPU kernels are compiled once per instruction set (DEFAULT, AVX2) and picked at run time; CUDA
kernels are added when torch has CUDA and nvcc is found (EDLM_CUDA=0/1 overrides). Sources are
listed in csrc/sources.txt, which CMakeLists.txt reads too.
"""

import os
import sys
from pathlib import Path

from setuptools import find_packages, setup

ROOT = Path(__file__).resolve().parent

try:
    import torch
    from torch.utils import cpp_extension
except ImportError:
    sys.exit(
        "edlm: torch is not importable in this build environment. edlm compiles against the torch\n"
        "you already have, so build it without isolation, in an environment that has torch:\n"
        "    pip install torch && pip install --no-build-isolation .\n"
        "(or run `bash scripts/bootstrap.sh`, which does both in .venv)."
    )

ISA_FLAGS = {
    "DEFAULT": ["-DCPU_CAPABILITY=DEFAULT", "-DCPU_CAPABILITY_DEFAULT"],
    "AVX2": ["-DCPU_CAPABILITY=AVX2", "-DCPU_CAPABILITY_AVX2", "-mavx2", "-mfma", "-mf16c"],
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


def want_cuda(cuda_sources):
    flag = os.environ.get("EDLM_CUDA", "")
    if flag not in ("", "0", "1"):
        sys.exit(f"edlm: EDLM_CUDA must be 0 or 1, got {flag!r}")
    available = torch.version.cuda is not None and cpp_extension.CUDA_HOME is not None
    if flag == "1" and not available:
        sys.exit(
            "edlm: EDLM_CUDA=1 but CUDA cannot be built here: torch.version.cuda = "
            f"{torch.version.cuda}, CUDA_HOME = {cpp_extension.CUDA_HOME}"
        )
    return bool(cuda_sources) and available and flag != "0"


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
                extra_postargs={"cxx": cxx + flags, "nvcc": []}
                if ext.with_cuda
                else cxx + flags,
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
        kwargs["extra_compile_args"]["nvcc"] = ["-O3", "-DEDLM_WITH_CUDA", "--use_fast_math"]
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
