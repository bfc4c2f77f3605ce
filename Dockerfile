# syntax=docker/dockerfile:1.7
#
# wan-worker: Wan2.2 A14B image-to-video on RunPod serverless, through a ComfyUI inside the same container.
#
#   docker build -t wan-worker:dev .                               # models come from the network volume
#   docker build --build-arg BAKE_MODELS=true -t wan-worker:baked .   # the default models baked in (~38 GB)
#   docker build --build-arg BAKE_MODELS=true --secret id=hf_token,env=HF_TOKEN ...   # a token, never in a layer
#
# Versions, and why they go together:
# - ComfyUI v0.3.76 (commit 30c259ca, 2025-12-01) is the first release after ComfyUI pull request #10975
#   (merged 2025-11-28: context windows slice the image conditioning of Wan I2V, without which a Wan I2V graph
#   with WanContextWindowsManual fails at its first sampler); v0.3.75 (2025-11-26) predates the merge.
#   The build checks that the tag still names that commit.
# - ComfyUI's requirements.txt leaves torch, torchvision and torchaudio unpinned and asks for a recent stable
#   PyTorch. PyTorch 2.9.1 was the newest stable release when v0.3.76 was tagged. Its CUDA 12.8 build (cu128)
#   runs on every GPU generation RunPod offers: Ampere (A40, RTX A6000, A100, RTX 3090: sm_80/86), Ada (L4,
#   L40S, RTX 4090, RTX 6000 Ada: sm_89), Hopper (H100, H200: sm_90) and Blackwell (B200, RTX 5090, RTX PRO 6000:
#   sm_100/120), and needs a driver of the 570 series or later; CUDA 13 builds would need 580 or later, which
#   many hosts do not have yet.
# - nvidia/cuda:12.8.1-runtime-ubuntu24.04 is the CUDA runtime that matches the cu128 wheels, and declares
#   CUDA 12.8 to the NVIDIA container runtime; Ubuntu 24.04 brings Python 3.12.
# - ComfyUI's Python files are compiled at build time, so a cold start does not compile them again.
# - SageAttention 1.0.6 is the newest release on PyPI: a pure-Python wheel whose kernels are Triton ones (Triton
#   3.5.1 comes with torch 2.9.1), so nothing is compiled at build time and it runs on all of the above.
#   SageAttention 2.x ships no PyPI wheels: it is built from source with nvcc against the exact torch build, on
#   a -devel base image, which this image avoids. Triton compiles a small launcher with gcc on first use, so gcc
#   and the Python headers are installed. start.sh drops --use-sage-attention when the module does not import.
#
# Layers run from the slowest-changing to the fastest: system packages, PyTorch, ComfyUI, SageAttention, the
# optional baked models, the worker's dependencies (pyproject.toml), then the worker's code, workflows and start
# script, so that a change to the worker's code rebuilds in seconds.

ARG BAKE_MODELS=false

# --------------------------------------------------------------------------------------------- base
FROM nvidia/cuda:12.8.1-runtime-ubuntu24.04 AS base

SHELL ["/bin/bash", "-o", "pipefail", "-c"]

ENV DEBIAN_FRONTEND=noninteractive \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_CONSTRAINT=/opt/constraints.txt \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH

# Ubuntu's package versions move with its security updates, so they are not pinned; the image's own software
# (PyTorch, ComfyUI, SageAttention, the worker's packages) is.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends \
        python3 python3-venv python3-dev gcc libc6-dev \
        git ca-certificates curl tini \
    && rm -rf /var/lib/apt/lists/*

# Every pip install below is held to these versions (PIP_CONSTRAINT).
COPY <<EOF /opt/constraints.txt
torch==2.9.1
torchvision==0.24.1
torchaudio==2.9.1
sageattention==1.0.6
runpod==1.12.0
websocket-client==1.9.2
requests==2.34.2
pydantic==2.13.4
boto3==1.44.8
EOF

RUN python3 -m venv "$VIRTUAL_ENV" \
    && pip install --no-cache-dir pip==25.3

RUN pip install --no-cache-dir --index-url https://download.pytorch.org/whl/cu128 \
        torch==2.9.1 torchvision==0.24.1 torchaudio==2.9.1

ARG COMFYUI_VERSION=v0.3.76
ARG COMFYUI_COMMIT=30c259cac8c08ff8d015f9aff3151cb525c9b702
RUN git clone --depth 1 --branch "$COMFYUI_VERSION" https://github.com/Comfy-Org/ComfyUI.git /opt/ComfyUI \
    && test "$(git -C /opt/ComfyUI rev-parse HEAD)" = "$COMFYUI_COMMIT" \
    && rm -rf /opt/ComfyUI/.git \
    && pip install --no-cache-dir -r /opt/ComfyUI/requirements.txt \
    && python3 -m compileall -q -x '/tests' /opt/ComfyUI

RUN pip install --no-cache-dir sageattention==1.0.6

# --------------------------------------------------------------------------------------------- models
# BAKE_MODELS=false: the models live on the network volume, fetched by start.sh on the first start.
FROM base AS models-false

# BAKE_MODELS=true: the default models (src/worker/models/manifest.json) are fetched here into the volume layout
# at /runpod-volume, checked against their sha256, and the start-up check is skipped (SKIP_MODEL_DOWNLOAD=true):
# the fastest cold start, with no network volume attached. (An attached network volume is mounted over
# /runpod-volume and hides them: set SKIP_MODEL_DOWNLOAD=false to fill it.) This layer depends on the manifest
# alone, so code changes do not fetch the models again.
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
           "clip_vision": "clip_vision"}
for f in json.load(open(sys.argv[1]))["files"]:
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
