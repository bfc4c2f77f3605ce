"""The worker as ``pip install .`` leaves it: a wheel built from the checkout, installed (not editable) into a
fresh virtualenv.

Nothing is downloaded: the wheel is built with this environment's setuptools (``--no-build-isolation``), and
the virtualenv borrows this environment's packages for the worker's dependencies (and pip). It borrows them
through a ``.pth`` line naming this environment's site-packages, after its own, rather than with
``--system-site-packages``: that option lends the base interpreter's packages, which lack the dependencies when
the tests run in a virtualenv of their own, and it runs the base's ``.pth`` files, among them a development
install's, which puts a checkout's ``src`` on the path. The build runs on a copy of what it reads, so the
checkout gets no ``build/`` or ``*.egg-info``.

``PYTHONPATH`` would also put a checkout first: :func:`installed_env` drops it. :meth:`Installed.worker_file`
says which ``worker`` an install's Python imports.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
BUILD_INPUTS = ("pyproject.toml", "README.md", "LICENSE", "src", "workflows")
"""What the build reads: pyproject.toml's readme, license-files and package folders."""


@dataclass(frozen=True)
class Installed:
    wheel: Path
    venv: Path

    @property
    def python(self) -> Path:
        return self.venv / "bin" / "python"

    def site_packages(self) -> Path:
        return Path(self.run("-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])").strip())

    def worker_file(self, cwd: Path) -> Path:
        """``worker.__file__`` as this virtualenv's Python imports it from ``cwd``."""
        return Path(self.run("-c", "import worker; print(worker.__file__)", cwd=cwd).strip())

    def run(self, *args: str, cwd: Path | None = None, env: Mapping[str, str] | None = None) -> str:
        done = subprocess.run(
            [str(self.python), *args],
            cwd=cwd or self.venv,
            env=installed_env(env),
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 0, f"{args} exited {done.returncode}:\n{done.stdout}\n{done.stderr}"
        return done.stdout

    def wheel_names(self) -> list[str]:
        with zipfile.ZipFile(self.wheel) as wheel:
            return wheel.namelist()


def installed_env(env: Mapping[str, str] | None = None) -> dict[str, str]:
    """``env`` (``os.environ`` by default) without ``PYTHONPATH``, which would put a checkout's ``src`` first."""
    return {k: v for k, v in (os.environ if env is None else env).items() if k != "PYTHONPATH"}


def _run(command: list[str], cwd: Path) -> None:
    done = subprocess.run(command, cwd=cwd, env=installed_env(), capture_output=True, text=True, timeout=300)
    if done.returncode != 0:
        raise AssertionError(f"{' '.join(command)} exited {done.returncode}:\n{done.stdout}\n{done.stderr}")


def build_wheel(work: Path) -> Path:
    """A wheel of the checkout, built in ``work`` from a copy of its build inputs."""
    tree = work / "tree"
    for name in BUILD_INPUTS:
        source = REPO / name
        if source.is_dir():
            shutil.copytree(source, tree / name, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
        else:
            tree.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, tree / name)
    dist = work / "dist"
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--no-input"]
    _run([*pip, "wheel", "--no-deps", "--no-build-isolation", "--wheel-dir", str(dist), str(tree)], cwd=work)
    (wheel,) = dist.glob("wan_worker-*.whl")
    return wheel


def install(work: Path) -> Installed:
    """Build the wheel and install it, with no dependencies and not editable, into ``work/venv``."""
    wheel = build_wheel(work)
    venv = work / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", str(venv)], cwd=work)
    installed = Installed(wheel=wheel, venv=venv)
    ours = dict.fromkeys(sysconfig.get_paths()[kind] for kind in ("purelib", "platlib"))
    (installed.site_packages() / "borrowed-site-packages.pth").write_text(
        "\n".join(ours) + "\n", encoding="utf-8"
    )
    # No pip of its own: this environment's, borrowed, installs into the virtualenv that runs it.
    pip = [str(installed.python), "-m", "pip", "--disable-pip-version-check", "--no-input"]
    _run([*pip, "install", "--no-deps", "--no-build-isolation", "--no-index", str(wheel)], cwd=work)
    return installed
