"""Build hook: every build of the package generates the gRPC stubs (package ``vregistry``).

The stubs are not committed; ``scripts/gen_protos.py`` makes them from ``protos/`` with
grpcio-tools, which ``pyproject.toml`` lists in ``build-system.requires``. A wheel (``pip
install .``, ``pip wheel .``, ``python -m build``, ``pip install`` of the sdist) gets them in
its build directory; an editable install gets them in ``server/``, where it imports from.
Everything else about the package is in ``pyproject.toml``.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

from setuptools import setup
from setuptools.command.build_py import build_py
from setuptools.errors import SetupError

ROOT = Path(__file__).resolve().parent


def _gen_protos() -> ModuleType:
    """scripts/gen_protos.py, the one definition of how the stubs are made (not a package)."""
    spec = importlib.util.spec_from_file_location("gen_protos", ROOT / "scripts" / "gen_protos.py")
    if spec is None or spec.loader is None:
        raise SetupError("scripts/gen_protos.py is missing")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class BuildPyWithStubs(build_py):
    """``build_py`` plus the generated stubs."""

    def run(self) -> None:
        super().run()
        out = ROOT / "server" if self.editable_mode else Path(self.build_lib)
        if _gen_protos().generate(out) != 0:
            raise SetupError("generating the gRPC stubs from protos/ failed")


setup(cmdclass={"build_py": BuildPyWithStubs})
