"""Everything about the package is in pyproject.toml; this only ships the robust checkpoint zoo.

``zoo/`` at the repository root stays the one copy in the source tree (benchmarks/cifar_zoo.py writes it, hfhub.zoo
publishes it); building the package copies it into ``timm_fcl/zoo/`` so that an installed timm-fcl loads the zoo's
pretrained tags with no network (timm_fcl/models/zoo.py). An editable install reads the repository's ``zoo/`` itself.
pyproject.toml's package-data cannot name a folder outside the package, and data-files would install it under the
environment's prefix, where the package could not find it reliably (``--user``, ``--target``, ``--prefix``)."""
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

ZOO = Path(__file__).resolve().parent / "zoo"
TARGET = Path("timm_fcl", "zoo")


def zoo_files() -> list[Path]:
    """The zoo's files, relative to zoo/ (hidden files left out)."""
    if not ZOO.is_dir():
        return []
    return sorted(p.relative_to(ZOO) for p in ZOO.rglob("*")
                  if p.is_file() and not any(part.startswith(".") for part in p.relative_to(ZOO).parts))


class BuildPyWithZoo(build_py):
    """setuptools' build_py, then zoo/ copied into the built package as timm_fcl/zoo/."""

    def run(self):
        super().run()
        if self.editable_mode:
            return
        for rel in zoo_files():
            dest = Path(self.build_lib) / TARGET / rel
            self.mkpath(str(dest.parent))
            self.copy_file(str(ZOO / rel), str(dest))

    def get_outputs(self, include_bytecode=1):
        zoo = [] if self.editable_mode else [str(Path(self.build_lib) / TARGET / rel) for rel in zoo_files()]
        return super().get_outputs(include_bytecode) + zoo


setup(cmdclass={"build_py": BuildPyWithZoo})
