"""The PEP 517 build backend of edlm (pyproject.toml's backend-path): setuptools' own, run so that
an isolated build (plain `pip install .`) compiles edlm._C against the torch of the environment
being installed into, not against one of its own."""

import importlib.util
import site
import sys
import sysconfig
from pathlib import Path

from setuptools import build_meta as _setuptools
from setuptools.build_meta import *  # noqa: F403 (every hook, unchanged)

__all__ = _setuptools.__all__


def _has_torch(folder):
    return (Path(folder) / "torch" / "__init__.py").is_file()


# pip runs a backend with the interpreter of the target environment but hides that environment's
# site-packages behind the isolated build environment's. So when torch is not importable here, the
# target's own site-packages (the purelib and platlib of this interpreter's sysconfig scheme: where
# pip installs edlm, so where the torch it will import lies) are appended to sys.path, after the
# isolated ones: the build tools still come from the build environment, only what it lacks (torch
# and what torch imports) from the target. Without isolation, or where the build environment has
# torch (uv's match-runtime build dependency, pyproject.toml), nothing changes; where no torch is
# found, setup.py says how to install it.
def _add_target_torch():
    if importlib.util.find_spec("torch") is not None:
        return
    paths = sysconfig.get_paths()
    dirs = list(dict.fromkeys([paths["purelib"], paths["platlib"]]))
    if not any(_has_torch(d) for d in dirs):
        dirs = [site.getusersitepackages()]  # `pip install --user`'s torch, if that is where it is
        if not _has_torch(dirs[0]):
            return  # no torch: setup.py says to install it first
    sys.path.extend(d for d in dirs if Path(d).is_dir() and d not in sys.path)
    importlib.invalidate_caches()


_add_target_torch()
