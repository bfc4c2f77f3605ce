# syntax=docker/dockerfile:1.7
#
# wan-worker: Wan2.2 A14B image-to-video on RunPod serverless, through a ComfyUI inside the same container.
#
#   docker build -t wan-worker:dev .                               # models come from the network volume
#   docker build --build-arg BAKE_MODELS=true -t wan-worker:baked .   # the default models baked in (~38 GB)
#   docker build --build-arg BAKE_MODELS=true --secret id=hf_token,env=HF_TOKEN ...   # a token, never in a layer
#
# Versions, and why they go together:
# - ComfyUI v0.33.0 (commit 2f35f4a0, 2026-08-13) is the ComfyUI the test suite runs: tests/real builds its own
#   environment from the ARG lines below (one per line: they are parsed), and tests/container checks that they
#   name the commit of the source kept for the tests. It has ComfyUI pull request #10975 (context windows slice
#   Wan I2V's image conditioning; first released in v0.4.0), without which a long video fails at its first
#   sampler. The build checks that the tag still names that commit. The tests take the source from the shared
#   folder or GitHub's archive of the commit and run it only when its files have the digest
#   COMFYUI_SOURCE_DIGEST: the sha256 of `sha256sum`'s lines for every regular file, by path sorted bytewise,
#   less two tokenizer files of other model families that the shared copy lacks (tests/real/comfy_env.py,
#   tree_digest, which gives the same in a shell).
# - PyTorch 2.14.1 and torchvision 0.29.1 from PyPI. ComfyUI v0.33.0 asks for a CUDA 13 build of PyTorch on every
#   NVIDIA GPU from the 20 series on, and PyPI's torch 2.14.1 for Linux is that build (cu130, with Triton 3.8.0
#   and CUDA 13.0.3 libraries as nvidia-* wheels): the very wheels the tests run on CPU. It covers every GPU
#   generation RunPod offers: Ampere (A40, RTX A6000, A100, RTX 3090: sm_80/86), Ada (L4, L40S, RTX 4090,
#   RTX 6000 Ada: sm_89), Hopper (H100, H200: sm_90) and Blackwell (B200, RTX 5090, RTX PRO 6000: sm_100/120).
# - torchaudio 2.11.1, PyPI's newest: ComfyUI v0.33.0 does not start without it (comfy/sd.py imports the LTX
#   audio VAE, which imports torchaudio). There is no 2.14 release; from 2.11 on torchaudio asks for any torch and
#   runs on torch 2.14.1 (the tests run ComfyUI with exactly this pair). No node of the Wan graphs uses it.
# - nvidia/cuda:13.0.3-runtime-ubuntu24.04 is the CUDA runtime that matches torch's CUDA 13.0.3 and declares
#   CUDA 13.0 to the NVIDIA container runtime. CUDA 13.0 needs an NVIDIA driver of the 580 series or later: on a
#   host with an older driver the container does not start, or torch finds no GPU. A RunPod endpoint must
#   therefore allow CUDA 13.0 (and later) only in its "allowed CUDA versions" filter, which keeps it off hosts
#   with older drivers (.runpod/hub.json: allowedCudaVersions). Ubuntu 24.04 brings Python 3.12.
# - comfy-kitchen 0.2.31 and comfy-aimdo 0.4.13, pinned as ComfyUI's requirements.txt pins them: ComfyUI's
#   compiled kernels and its dynamic VRAM manager, both shipped as wheels.
# - No SageAttention, and so no compiler toolchain. Its only PyPI wheels (1.0.x, 1.0.6 the newest, from 2024) are
#   pure Python with Triton kernels, and Triton compiles a C launcher with gcc or clang the first time a kernel
#   runs: the image would need gcc, the C library headers and Python's headers for it. SageAttention 2.x has no
#   wheels at all (it is built with nvcc against the exact torch build). Without it ComfyUI uses PyTorch's own
#   scaled-dot-product attention (flash and memory-efficient kernels) on NVIDIA GPUs. ComfyUI v0.33.0 has a
#   compiled INT8 attention of its own in comfy-kitchen's wheel (--use-ck-attention, compute capability 7.5 or
#   later, through COMFY_EXTRA_ARGS); it trades precision for speed and stays opt-in.
# - ComfyUI's Python files are compiled at build time, so a cold start does not compile them again.
#
# Layers run from the slowest-changing to the fastest: system packages, PyTorch, ComfyUI, the optional baked
# models, the worker's dependencies (pyproject.toml), then the worker's code, workflows and start script, so that
# a change to the worker's code rebuilds in seconds.

ARG BAKE_MODELS=false

# --------------------------------------------------------------------------------------------- base
FROM nvidia/cuda:13.0.3-runtime-ubuntu24.04 AS base

SHELL ["/bin/bash", "-o", "pipefail", "-c"]

ENV DEBIAN_FRONTEND=noninteractive \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_CONSTRAINT=/opt/constraints.txt \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH

# Ubuntu's package versions move with its security updates, so they are not pinned; the image's own software
# (PyTorch, ComfyUI, the worker's packages) is. No compiler: every Python package here comes as a wheel.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends \
        python3 python3-venv \
        git ca-certificates curl tini \
    && rm -rf /var/lib/apt/lists/*

ARG TORCH_VERSION=2.14.1
ARG TORCHVISION_VERSION=0.29.1
ARG TORCHAUDIO_VERSION=2.11.1

# Every pip install below is held to these versions (PIP_CONSTRAINT): torch, torchvision, torchaudio from the ARGs,
# the Triton that torch 2.14.1 brings, ComfyUI's own compiled packages, and the worker's dependencies.
RUN cat > /opt/constraints.txt <<EOF
torch==${TORCH_VERSION}
torchvision==${TORCHVISION_VERSION}
torchaudio==${TORCHAUDIO_VERSION}
triton==3.8.0
comfy-kitchen==0.2.31
comfy-aimdo==0.4.13
runpod==1.12.0
websocket-client==1.9.2
requests==2.34.2
pydantic==2.13.4
pydantic-settings==2.14.1
boto3==1.44.8
pillow==13.0.0
huggingface_hub==2.4.0
hf-xet==1.8.0
filelock==4.3.2
tenacity==9.2.1
EOF

RUN python3 -m venv "$VIRTUAL_ENV" \
    && pip install --no-cache-dir pip==25.3

# PyPI's build (CUDA 13.0), not an index of other CUDA builds.
RUN pip install --no-cache-dir "torch==${TORCH_VERSION}" "torchvision==${TORCHVISION_VERSION}" \
        "torchaudio==${TORCHAUDIO_VERSION}"

# ComfyUI's requirements.txt names torch, torchvision and torchaudio unpinned: the constraints hold them to the
# versions installed above.
ARG COMFYUI_VERSION=v0.33.0
ARG COMFYUI_COMMIT=2f35f4a08176d993cded35dac3332be4f7287f41
ARG COMFYUI_SOURCE_DIGEST=3118dc2f9c786dc152b888ba679f63050d60281d26883550065de156cb5c60a4
RUN git clone --depth 1 --branch "$COMFYUI_VERSION" https://github.com/Comfy-Org/ComfyUI.git /opt/ComfyUI \
    && test "$(git -C /opt/ComfyUI rev-parse HEAD)" = "$COMFYUI_COMMIT" \
    && rm -rf /opt/ComfyUI/.git \
    && pip install --no-cache-dir -r /opt/ComfyUI/requirements.txt \
    && python3 -m compileall -q -x '/tests' /opt/ComfyUI

# --------------------------------------------------------------------------------------------- models
# BAKE_MODELS=false: the models live on the network volume, fetched by start.sh on the first start.
FROM base AS models-false

# BAKE_MODELS=true: the default models that start.sh would fetch (src/worker/models/manifest.json; not those a job
# fetches on demand) are fetched here into the volume layout at /runpod-volume, checked against their sha256, and
# the start-up check is skipped (SKIP_MODEL_DOWNLOAD=true): the fastest cold start, with no network volume
# attached. (An attached network volume is mounted over /runpod-volume and hides them: set
# SKIP_MODEL_DOWNLOAD=false to fill it.) This layer depends on the manifest alone, so code changes do not fetch
# the models again.
FROM base AS models-true
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
COPY src/worker/models/manifest.json /tmp/manifest.json
RUN --mount=type=secret,id=hf_token,required=false <<'EOF'
set -euo pipefail
auth="X-No-Token: 1"
if [[ -s /run/secrets/hf_token ]]; then auth="Authorization: Bearer $(< /run/secrets/hf_token)"; fi
python3 - /tmp/manifest.json > /tmp/models.txt <<'PY'
import json, sys
folders = {"diffusion_models": "models", "loras": "loras", "text_encoders": "text_encoders", "vae": "vae",
           "clip_vision": "clip_vision", "frame_interpolation": "frame_interpolation"}
for f in json.load(open(sys.argv[1]))["files"]:
    if f.get("fetch", "start") != "on_demand":  # files fetched by the first job that needs them stay out
        print(folders[f["kind"]], f["name"], f["sha256"], f["url"])
PY
while read -r folder name sha url; do
    part="/runpod-volume/$folder/.$name.part"
    mkdir -p "/runpod-volume/$folder"
    echo "fetching $folder/$name"
    curl -fsSL --retry 10 --retry-all-errors -C - -H "$auth" -o "$part" "$url"
    echo "$sha  $part" | sha256sum -c -
    mv "$part" "/runpod-volume/$folder/$name"
done < /tmp/models.txt
rm /tmp/models.txt /tmp/manifest.json
EOF

ENV SKIP_MODEL_DOWNLOAD=true

# --------------------------------------------------------------------------------------------- worker
# models-true or models-false, both stages of this file (not an image from a registry).
# hadolint ignore=DL3006
FROM models-${BAKE_MODELS} AS final
SHELL ["/bin/bash", "-o", "pipefail", "-c"]

WORKDIR /app

# The worker's dependencies, read from pyproject.toml; its code is put on the path by a .pth file, so that the
# code layers below are plain copies.
COPY pyproject.toml /app/pyproject.toml
RUN python3 -c 'import tomllib; print("\n".join(tomllib.load(open("/app/pyproject.toml", "rb"))["project"]["dependencies"]))' > /tmp/worker-requirements.txt \
    && pip install --no-cache-dir -r /tmp/worker-requirements.txt \
    && rm /tmp/worker-requirements.txt \
    && purelib="$(python3 -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')" \
    && echo /app/src > "$purelib/wan_worker.pth"

# ComfyUI's input and output folders, given to ComfyUI by start.sh, so that the worker can delete each job's
# files from them.
ENV COMFY_DIR=/opt/ComfyUI \
    COMFY_INPUT_DIR=/opt/ComfyUI/input \
    COMFY_OUTPUT_DIR=/opt/ComfyUI/output \
    EXTRA_MODEL_PATHS=/app/extra_model_paths.yaml

COPY workflows/ /app/workflows/
COPY extra_model_paths.yaml /app/extra_model_paths.yaml
COPY --chmod=755 start.sh /app/start.sh
COPY src/ /app/src/

EXPOSE 8000
ENTRYPOINT ["/usr/bin/tini", "--"]
CMD ["/app/start.sh"]
