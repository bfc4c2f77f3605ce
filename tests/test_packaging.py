"""The package as users install it: the wheel carries the workflows and the manifest, a non-editable install
finds its own workflows from any folder (``WORKFLOWS_DIR`` still overrides), and ``--help`` answers without
starting a worker. (The real tier runs a real job through such an install: tests/real.)"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tomllib
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.installed import REPO, Installed, install
from worker.__main__ import USAGE

pytestmark = pytest.mark.timeout(300)

PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
BIND = """
import json, sys, worker
from worker import graph
from worker.config import Settings
from worker.schema import parse_job_input

settings = Settings.from_env()
job = parse_job_input({"prompt": "a fox", "image_base64": "aGVsbG8=", "end_image_base64": "aGVsbG8=", "seed": 7})
files = graph.ModelFiles(**{role: role + ".safetensors" for role in sys.argv[1:]})
bound = graph.bind(
    graph.load_template(settings.workflows_dir, job.mode), job, files, graph.Images("s.png", "e.png"),
    filename_prefix="video/x",
)
print(json.dumps({"worker": worker.__file__, "workflows_dir": str(settings.workflows_dir), "graph": bound}))
"""
ROLES = ("high_model", "low_model", "text_encoder", "vae", "lightning_high", "lightning_low")


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Installed]:
    yield install(tmp_path_factory.mktemp("installed"))


def bind_with(installed: Installed, cwd: Path, **env: str) -> dict:
    """The installed worker's settings and a FLF2V job bound into its template, run from ``cwd``."""
    base = {k: v for k, v in os.environ.items() if k != "WORKFLOWS_DIR"}
    return json.loads(installed.run("-c", BIND, *ROLES, cwd=cwd, env={**base, **env}))


def test_the_wheel_carries_the_workflows_the_manifest_and_an_spdx_license(installed: Installed) -> None:
    names = installed.wheel_names()
    for template in ("wan22_i2v.json", "wan22_flf2v.json"):
        assert f"worker/workflows/{template}" in names
    assert {"worker/models/manifest.json", "worker/py.typed"} <= set(names)
    assert not [n for n in names if n.startswith(("workflows/", "tests/"))], "nothing outside the package"
    metadata = next(n for n in names if n.endswith(".dist-info/METADATA"))
    with zipfile.ZipFile(installed.wheel) as wheel:
        text = wheel.read(metadata).decode()
        assert (
            wheel.read("worker/workflows/wan22_i2v.json") == (REPO / "workflows/wan22_i2v.json").read_bytes()
        )
    assert "License-Expression: Apache-2.0" in text.splitlines()


def test_pyproject_lists_every_package_of_src_and_maps_the_workflows() -> None:
    """The package list is written out (the finder cannot add workflows/); a new package of src must join it."""
    found = sorted(
        ".".join(init.parent.relative_to(REPO / "src").parts) for init in (REPO / "src").rglob("__init__.py")
    )
    config = PYPROJECT["tool"]["setuptools"]
    assert sorted(config["packages"]) == sorted([*found, "worker.workflows"])
    assert config["package-dir"] == {"": "src", "worker.workflows": "workflows"}
    assert PYPROJECT["project"]["license"] == "Apache-2.0"


def test_an_installed_worker_binds_its_own_workflows_from_outside_the_checkout(
    installed: Installed, tmp_path: Path
) -> None:
    site = installed.site_packages()
    assert installed.worker_file(tmp_path) == site / "worker" / "__init__.py", (
        "the venv's copy, not a checkout"
    )
    result = bind_with(installed, tmp_path)
    assert Path(result["worker"]).is_relative_to(site)
    assert result["workflows_dir"] == str(site / "worker" / "workflows")
    bound = result["graph"]
    assert bound["positive"]["inputs"]["text"] == "a fox"
    assert bound["end_image"]["inputs"]["image"] == "e.png"
    assert bound["conditioning"]["class_type"] == "WanFirstLastFrameToVideo"


def test_workflows_dir_still_overrides_the_packaged_workflows(installed: Installed, tmp_path: Path) -> None:
    custom = tmp_path / "custom"
    custom.mkdir()
    for name in ("wan22_i2v.json", "wan22_flf2v.json"):
        graph = json.loads((REPO / "workflows" / name).read_text(encoding="utf-8"))
        graph["decode"]["_meta"] = {"title": "custom decode"}
        (custom / name).write_text(json.dumps(graph), encoding="utf-8")
    result = bind_with(installed, tmp_path, WORKFLOWS_DIR=str(custom))
    assert result["workflows_dir"] == str(custom)
    assert result["graph"]["decode"]["_meta"] == {"title": "custom decode"}


def test_the_installed_command_prints_its_usage(installed: Installed, tmp_path: Path) -> None:
    done = subprocess.run(
        [str(installed.venv / "bin" / "wan-worker"), "--help"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert (done.returncode, done.stdout) == (0, USAGE), done.stderr


@pytest.fixture
def no_runpod(tmp_path: Path) -> dict[str, str]:
    """An environment whose ``import runpod`` fails loudly, the checkout's ``src`` on the path."""
    poison = tmp_path / "poison" / "runpod"
    poison.mkdir(parents=True)
    (poison / "__init__.py").write_text("raise ImportError('runpod was imported')\n")
    return dict(os.environ, PYTHONPATH=f"{poison.parent}{os.pathsep}{REPO / 'src'}")


def run_worker(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "worker", *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=60
    )


@pytest.mark.parametrize("args", [["--help"], ["-h"], ["--rp_serve_api", "--help"]])
def test_help_prints_the_usage_without_importing_runpod(
    args: list[str], no_runpod: dict[str, str], tmp_path: Path
) -> None:
    done = run_worker(args, no_runpod, tmp_path)
    assert (done.returncode, done.stdout) == (0, USAGE), done.stderr
    for command in ("python -m worker schema", "python -m worker models", "python -m worker settings"):
        assert command in USAGE
    assert "--rp_serve_api" in USAGE and "--test_input" in USAGE


def test_without_help_the_worker_imports_runpod(no_runpod: dict[str, str], tmp_path: Path) -> None:
    """The check above can fail: anything but ``--help`` goes on to runpod."""
    done = run_worker(["--rp_serve_api"], no_runpod, tmp_path)
    assert done.returncode != 0 and "runpod was imported" in done.stderr


def test_a_command_keeps_its_own_help(no_runpod: dict[str, str], tmp_path: Path) -> None:
    done = run_worker(["models", "--help"], no_runpod, tmp_path)
    assert done.returncode == 0 and done.stdout.startswith("usage: python -m worker models"), done.stderr
