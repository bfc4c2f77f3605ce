"""Where the real tier's ComfyUI source comes from, and how it is checked; fast: no ComfyUI starts.

A small synthetic tree stands in for ComfyUI: the tests compute its digest and pin that, and serve it as a
tarball from a local HTTP server as GitHub would serve its archive.
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from tests.support.httpserver import HttpServer, Route
from tests.support.worker_proc import free_port

from .comfy_env import (
    DIGEST_EXCLUDED,
    GITHUB_ARCHIVE,
    REPO,
    SOURCE,
    Pins,
    SetupError,
    ensure_source,
    source_origin,
    source_version,
    tree_digest,
)

pytestmark = pytest.mark.timeout(120)

FILES = {
    "main.py": b"print('comfy')\n",
    "comfyui_version.py": b'__version__ = "9.9.9"\n',
    "comfy/sd.py": b"# the models\n",
    "comfy/text_encoders/umt5_config_xxl.json": b"{}\n",
}


def write_tree(root: Path, files: dict[str, bytes]) -> Path:
    for relative, data in files.items():
        (root / relative).parent.mkdir(parents=True, exist_ok=True)
        (root / relative).write_bytes(data)
    return root


def tarball(files: dict[str, bytes], top: str = "ComfyUI-" + "c" * 40) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for relative, data in files.items():
            info = tarfile.TarInfo(f"{top}/{relative}" if top else relative)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def pins_for(digest: str) -> Pins:
    return Pins(
        comfyui_version="v9.9.9",
        comfyui_commit="c" * 40,
        comfyui_source_digest=digest,
        torch="0",
        torchvision="0",
    )


@pytest.fixture
def digest(tmp_path: Path) -> str:
    return tree_digest(write_tree(tmp_path / "tree", FILES))


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty cache; no shared folder, no URL."""
    monkeypatch.setenv("WAN_WORKER_TEST_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("WAN_WORKER_SHARED", str(tmp_path / "no-shared"))
    monkeypatch.delenv("WAN_WORKER_COMFYUI_URL", raising=False)
    return tmp_path / "cache"


@pytest.fixture
def server() -> HttpServer:
    with HttpServer() as srv:
        yield srv


def serve(server: HttpServer, monkeypatch: pytest.MonkeyPatch, route: Route) -> str:
    server.routes["/comfyui.tar.gz"] = route
    url = server.url("/comfyui.tar.gz")
    monkeypatch.setenv("WAN_WORKER_COMFYUI_URL", url)
    return url


def test_the_digest_is_sha256sum_of_the_regular_files_by_path(tmp_path: Path) -> None:
    tree = write_tree(tmp_path / "a", FILES)
    digest = tree_digest(tree)
    shell = tree_digest.__doc__.split("::", 1)[1]  # the documented shell command gives the same digest
    done = subprocess.run(["bash", "-c", shell], cwd=tree, capture_output=True, text=True, check=True)
    assert done.stdout.split()[0] == digest

    write_tree(tree, dict.fromkeys(DIGEST_EXCLUDED, b"a tokenizer the shared copy lacks"))
    (tree / "empty").mkdir()
    (tree / "link.py").symlink_to(tree / "main.py")
    assert tree_digest(tree) == digest, "excluded files, folders and symlinks do not count"

    assert tree_digest(write_tree(tmp_path / "b", {**FILES, "main.py": b"print('other')\n"})) != digest
    moved = {("comfy/other.py" if k == "comfy/sd.py" else k): v for k, v in FILES.items()}
    assert tree_digest(write_tree(tmp_path / "c", moved)) != digest


def test_a_served_source_is_downloaded_checked_and_kept(
    cache: Path, digest: str, server: HttpServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    serve(server, monkeypatch, Route(body=tarball(FILES)))
    source = ensure_source(pins_for(digest))
    assert source.name == SOURCE and source.is_relative_to(cache)
    assert {p.relative_to(source).as_posix() for p in source.rglob("*") if p.is_file()} == set(FILES)
    assert source_version(source) == "9.9.9"
    assert not list(source.parent.glob("*.tar.gz")), "the downloaded archive is not kept"
    assert ensure_source(pins_for(digest)) == source
    assert len(server.hits()) == 1, "a checked source is fetched once per machine"


def test_a_wrong_source_fails_at_the_check_and_leaves_nothing(
    cache: Path, digest: str, server: HttpServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = serve(server, monkeypatch, Route(body=tarball({**FILES, "main.py": b"print('altered')\n"})))
    with pytest.raises(SetupError) as failure:
        ensure_source(pins_for(digest))
    message = str(failure.value)
    assert message.startswith(
        f"checking ComfyUI's source from {url} against the Dockerfile's ARG COMFYUI_SOURCE"
    )
    assert f"the pin is {digest}" in message
    assert not [p.name for p in cache.iterdir() if not p.name.endswith(".lock")]


def test_an_unreachable_or_missing_source_fails_at_the_download(
    cache: Path, digest: str, server: HttpServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = serve(server, monkeypatch, Route(status=404))
    with pytest.raises(SetupError, match=f"^downloading ComfyUI's source from {url} failed: 404"):
        ensure_source(pins_for(digest))
    closed = f"http://127.0.0.1:{free_port()}/comfyui.tar.gz"
    monkeypatch.setenv("WAN_WORKER_COMFYUI_URL", closed)
    with pytest.raises(SetupError, match=f"^downloading ComfyUI's source from {closed} failed"):
        ensure_source(pins_for(digest))


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        (b"not a tarball", " failed: file could not be opened"),
        (tarball(FILES, top=""), ": expected one top folder, found comfy, comfyui_version.py, main.py"),
    ],
    ids=["not-a-tarball", "no-top-folder"],
)
def test_an_archive_that_is_not_one_source_folder_fails_at_the_unpacking(
    cache: Path, digest: str, server: HttpServer, monkeypatch: pytest.MonkeyPatch, body: bytes, problem: str
) -> None:
    url = serve(server, monkeypatch, Route(body=body))
    with pytest.raises(SetupError) as failure:
        ensure_source(pins_for(digest))
    assert str(failure.value).startswith(f"unpacking ComfyUI's source from {url}{problem}")


def test_the_source_comes_from_the_url_else_the_shared_copy_else_github(
    cache: Path, digest: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pins = pins_for(digest)
    assert source_origin(pins) == GITHUB_ARCHIVE.format(commit="c" * 40)
    assert (
        GITHUB_ARCHIVE.format(commit="c" * 40)
        == f"https://github.com/Comfy-Org/ComfyUI/archive/{'c' * 40}.tar.gz"
    )
    shared = tmp_path / "shared"
    (shared / "comfyui").mkdir(parents=True)
    (shared / "comfyui" / "ComfyUI-v9.9.9.tar.gz").write_bytes(tarball(FILES, top="ComfyUI-v9.9.9"))
    monkeypatch.setenv("WAN_WORKER_SHARED", str(shared))
    assert source_origin(pins) == str(shared / "comfyui" / "ComfyUI-v9.9.9.tar.gz")
    assert source_version(ensure_source(pins)) == "9.9.9", "the shared copy unpacks with no server at all"
    monkeypatch.setenv("WAN_WORKER_COMFYUI_URL", "http://127.0.0.1:9/x.tar.gz")
    assert source_origin(pins) == "http://127.0.0.1:9/x.tar.gz"


def test_a_wrong_source_fails_the_real_tier_naming_the_step_and_never_skips(
    tmp_path: Path, server: HttpServer
) -> None:
    """The real tier's own setup, in a pytest of its own, against a source that is not the pinned one."""
    server.routes["/comfyui.tar.gz"] = Route(body=tarball(FILES))
    env = dict(
        os.environ,
        WAN_WORKER_TEST_CACHE=str(tmp_path / "cache"),
        WAN_WORKER_SHARED=str(tmp_path / "no-shared"),
        WAN_WORKER_COMFYUI_URL=server.url("/comfyui.tar.gz"),
    )
    test = "tests/real/test_real_comfyui.py::test_dockerfile_pins_the_comfyui_and_torch_the_tests_run"
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-n", "0", "-p", "no:cacheprovider", "-q", test],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=100,
    )
    assert done.returncode == 1, done.stdout + done.stderr
    assert (
        "real ComfyUI setup failed while getting ComfyUI's source: checking ComfyUI's source" in done.stdout
    )
    assert "1 error" in done.stdout and "skipped" not in done.stdout
