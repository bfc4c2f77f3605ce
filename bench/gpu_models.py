"""Write the default models at full size with random weights, in the worker's volume layout: nothing is
downloaded, and the weights' values do not change the work a GPU does with them.

Run with ComfyUI's Python (the project's has no torch); ``gpu.py`` does it for you:

    <python> bench/gpu_models.py --comfyui <ComfyUI source> --manifest src/worker/models/manifest.json \\
        --folders '<JSON: ComfyUI folder kind -> volume folder>' --volume DIR [--device cuda] [--values random]

Every file has the tensor names, shapes and dtypes of the published one, derived from ComfyUI's own model
classes built on the ``meta`` device with the published configs (``gpu_shapes.py``):

- the two experts in ComfyUI's "fp8_scaled" layout, as ``comfy.utils.convert_old_quants`` reads it: every 2-D
  linear weight in float8_e4m3fn with a float32 ``.scale_weight`` and ``.scale_input`` beside it, every other
  tensor in float16, and the marker ``scaled_fp8``, an empty float8_e4m3fn tensor (an empty marker lets ComfyUI
  multiply in fp8; a 2-element one would ask for full-precision products). Written so, an expert is exactly the
  published 14,294,742,832 bytes;
- the UMT5-XXL text encoder in the same layout (its 168 block linears fp8 with ``.scale_weight``, the rest float16,
  the same marker) with the tiny tokenizer of ``tests/real/make_tiny_models.py``: all zeros but its layer norms,
  written as a sparse file in seconds (ComfyUI builds UMT5-XXL from a fixed config, so it cannot be smaller; its
  values change nothing the benchmark times);
- the Lightning LoRAs, whose layout is assumed (see :func:`lora_entries`);
- the Wan 2.1 VAE and FILM, as ``make_tiny_models.py`` writes them (the real architectures, random fp16).

``--values random`` (the default) fills the experts and LoRAs with seeded normal values generated on
``--device`` (the GPU: about 31 GB to write); ``--values zeros`` leaves them as holes (a sparse file of the right
size, in seconds: the layout check ``gpu.py --tiny`` runs). ``--check`` has ComfyUI detect each expert written.
Prints a JSON report: each file's size, the published size, and the seconds it took.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(1, str(HERE.parent / "tests" / "real"))

import gpu_shapes  # noqa: E402
import make_tiny_models as tiny  # noqa: E402

MARKER = "scaled_fp8"
ITEMSIZE = {"F8_E4M3": 1, "U8": 1, "F16": 2, "BF16": 2, "F32": 4}
FILM_ROLE = "interpolation_model"


@dataclass(frozen=True)
class Fill:
    """A large tensor left as a hole by the layout, filled afterwards: ``std`` x N(0, 1) in ``dtype``."""

    name: str
    shape: tuple[int, ...]
    dtype: Any
    std: float


def numel(shape: tuple[int, ...]) -> int:
    return math.prod(shape)


def hole(name: str, dtype: str, shape: tuple[int, ...]) -> tiny.Entry:
    return tiny.Entry(name, dtype, shape, numel(shape) * ITEMSIZE[dtype], None)


def scalar(name: str, value: float) -> tiny.Entry:
    return tiny.tensor_entry(name, torch.tensor(value, dtype=torch.float32))


def safetensors_order(entries: list[tiny.Entry]) -> list[tiny.Entry]:
    """The order the safetensors library writes tensors in (largest dtype first, then by name), which the
    published files follow: the header's offsets, and so its length, come out the same."""
    return sorted(entries, key=lambda e: (-ITEMSIZE[e.dtype], e.name))


def small_tensor(name: str, shape: tuple[int, ...], generator: Any) -> Any:
    """Norm scales 1, biases 0, anything else N(0, 0.02), in float16 (``make_tiny_models``' rule)."""
    if tiny.is_norm(name):
        return torch.ones(shape, dtype=torch.float16)
    if name.endswith(".bias"):
        return torch.zeros(shape, dtype=torch.float16)
    return (torch.randn(shape, generator=generator) * 0.02).to(torch.float16)


def expert_model() -> Any:
    from comfy.ldm.wan.model import WanModel

    with torch.device("meta"):
        return WanModel(
            **gpu_shapes.WAN22_A14B,
            device="meta",
            dtype=torch.float16,
            operations=comfy.ops.disable_weight_init,
        )


def expert_entries(seed: int) -> tuple[list[tiny.Entry], list[Fill]]:
    """One expert in the fp8_scaled layout. Each fp8 weight is N(0, 1) and its scale 1/sqrt(fan_in), so every
    linear layer keeps its input's magnitude through the 40 blocks; ``.scale_input`` is 1 (which ComfyUI drops)."""
    generator = torch.Generator().manual_seed(seed)
    entries, fills = [], []
    for name, value in expert_model().state_dict().items():
        shape = tuple(value.shape)
        if name.endswith(".weight") and len(shape) == 2:
            layer = name.removesuffix(".weight")
            entries.append(hole(name, "F8_E4M3", shape))
            fills.append(Fill(name, shape, torch.float8_e4m3fn, 1.0))
            entries.append(scalar(f"{layer}.scale_weight", 1.0 / math.sqrt(shape[1])))
            entries.append(scalar(f"{layer}.scale_input", 1.0))
        else:
            entries.append(tiny.tensor_entry(name, small_tensor(name, shape, generator)))
    entries.append(tiny.Entry(MARKER, "F8_E4M3", (0,), 0, b""))
    return safetensors_order(entries), fills


def lora_entries() -> tuple[list[tiny.Entry], list[Fill]]:
    """A Lightning LoRA. Assumed, as the published file's header is not at hand: rank ``LORA_RANK`` (64) in
    float32 on every linear layer of the 40 blocks (self- and cross-attention q, k, v, o, and both FFN layers),
    named ``diffusion_model.<layer>.lora_A.weight`` (rank x in), ``.lora_B.weight`` (out x rank) and ``.alpha``.
    That is 1,226,978,560 bytes against the published 1,226,977,424: the tensors' bytes agree, the 1,136 left are
    the header's spelling of the names. A is N(0, 1/in), B N(0, 0.01^2), alpha the rank (scale 1)."""
    rank = gpu_shapes.LORA_RANK
    entries, fills = [], []
    for name, value in expert_model().state_dict().items():
        if not (name.startswith("blocks.") and name.endswith(".weight") and value.dim() == 2):
            continue
        out_dim, in_dim = tuple(value.shape)
        key = f"diffusion_model.{name.removesuffix('.weight')}"
        for suffix, shape, std in (
            ("lora_A.weight", (rank, in_dim), 1.0 / math.sqrt(in_dim)),
            ("lora_B.weight", (out_dim, rank), 0.01),
        ):
            entries.append(hole(f"{key}.{suffix}", "F32", shape))
            fills.append(Fill(f"{key}.{suffix}", shape, torch.float32, std))
        entries.append(scalar(f"{key}.alpha", float(rank)))
    return safetensors_order(entries), fills


def text_encoder_entries(source: Path) -> list[tiny.Entry]:
    """UMT5-XXL in the fp8_scaled layout: zeros (holes), layer norms 1, scales 1."""
    import comfy.text_encoders.t5 as t5

    config = json.loads((source / "comfy" / "text_encoders" / "umt5_config_xxl.json").read_text())
    with torch.device("meta"):
        model = t5.T5(config, dtype=torch.float16, device="meta", operations=comfy.ops.manual_cast)
    entries = []
    for name, value in model.state_dict().items():
        shape = tuple(value.shape)
        if name.startswith("encoder.block.") and len(shape) == 2 and "relative_attention_bias" not in name:
            entries.append(hole(name, "F8_E4M3", shape))
            entries.append(scalar(f"{name.removesuffix('.weight')}.scale_weight", 1.0))
        elif "layer_norm" in name:
            entries.append(tiny.tensor_entry(name, torch.ones(shape, dtype=torch.float16)))
        else:
            entries.append(hole(name, "F16", shape))
    entries.append(tiny.Entry(MARKER, "F8_E4M3", (0,), 0, b""))
    spiece = tiny.spiece_model()
    entries.append(tiny.Entry("spiece_model", "U8", (len(spiece),), len(spiece), spiece))
    return safetensors_order(entries)


# ------------------------------------------------------------------------------------------- writing
def read_header(path: Path) -> tuple[int, dict[str, Any]]:
    """The safetensors header: (offset of the data, tensor name -> dtype, shape, data_offsets)."""
    with open(path, "rb") as handle:
        length = int.from_bytes(handle.read(8), "little")
        header: dict[str, Any] = json.loads(handle.read(length))
    header.pop("__metadata__", None)
    return 8 + length, header


def pwrite_all(fd: int, data: Any, offset: int) -> None:
    view = memoryview(data).cast("B")
    while view:
        written = os.pwrite(fd, view, offset)
        view, offset = view[written:], offset + written


def fill(path: Path, fills: list[Fill], *, seed: int, device: str) -> None:
    """Generate each hole's values on ``device`` and write them in place, the disk writes overlapping the next
    tensor's generation (at most a few tensors in flight)."""
    start, header = read_header(path)
    fd = os.open(path, os.O_WRONLY)
    try:
        with ThreadPoolExecutor(max_workers=2) as pool:
            pending: deque[Future[None]] = deque()
            for index, item in enumerate(fills):
                generator = torch.Generator(device=device).manual_seed(seed * 1_000_003 + index)
                values = torch.randn(item.shape, generator=generator, device=device, dtype=torch.float32)
                if item.std != 1.0:
                    values.mul_(item.std)
                data = values.to(item.dtype).reshape(-1).view(torch.uint8).cpu().numpy()
                offset = start + header[item.name]["data_offsets"][0]
                pending.append(pool.submit(pwrite_all, fd, data, offset))
                while len(pending) > 3:
                    pending.popleft().result()
            for future in pending:
                future.result()
        os.fsync(fd)
    finally:
        os.close(fd)


def write(
    path: Path, entries: list[tiny.Entry], fills: list[Fill], *, values: str, seed: int, device: str
) -> int:
    size = tiny.write_safetensors(path, entries)
    if values == "random" and fills:
        fill(path, fills, seed=seed, device=device)
    return size


def detect(path: Path) -> dict[str, Any]:
    """What ComfyUI makes of an expert file, the way ``UNETLoader`` reads one (its header is enough: tensors on
    the ``meta`` device, the scalars read for real)."""
    import comfy.model_detection
    import comfy.utils
    from safetensors import safe_open

    _, header = read_header(path)
    dtypes = {"F8_E4M3": torch.float8_e4m3fn, "F16": torch.float16, "F32": torch.float32}
    state: dict[str, Any] = {}
    with safe_open(str(path), framework="pt") as handle:
        for name, info in header.items():
            if numel(tuple(info["shape"])) == 1:
                state[name] = handle.get_tensor(name)
            else:
                state[name] = torch.empty(info["shape"], dtype=dtypes[info["dtype"]], device="meta")
    state, _ = comfy.utils.convert_old_quants(state, "", metadata={})
    config = comfy.model_detection.model_config_from_unet(state, "")
    if config is None:
        return {"detected": None}
    layers = [name for name in state if name.endswith(".comfy_quant")]
    return {
        "detected": type(config).__name__,
        "unet_config": {k: v for k, v in config.unet_config.items() if isinstance(v, int | str)},
        "fp8_layers": len(layers),
        "mixed_precision": bool(config.quant_config),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--comfyui", type=Path, required=True, help="ComfyUI's source folder")
    parser.add_argument("--manifest", type=Path, required=True, help="src/worker/models/manifest.json")
    parser.add_argument("--volume", type=Path, required=True, help="the folder to fill")
    parser.add_argument(
        "--folders", type=json.loads, required=True, help="JSON: ComfyUI folder kind -> the volume's folder"
    )
    parser.add_argument(
        "--device", default=None, help="where the values are generated (default: cuda if any)"
    )
    parser.add_argument("--values", choices=("random", "zeros"), default="random")
    parser.add_argument("--only", default="", help="comma-separated roles (default: all)")
    parser.add_argument("--check", action="store_true", help="have ComfyUI detect each expert written")
    args = parser.parse_args(argv)

    source = args.comfyui.resolve()
    sys.path.insert(0, str(source))
    global comfy, torch
    import torch
    from comfy.cli_args import args as comfy_args

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    comfy_args.cpu = device == "cpu"
    import comfy.ops

    tiny.torch, tiny.comfy = torch, comfy
    manifest = json.loads(args.manifest.read_text())["files"]
    entry = {f["role"]: f for f in manifest if f.get("role")}
    wanted = {r for r in args.only.split(",") if r} or set(entry)
    unknown = wanted - set(entry)
    if unknown:
        parser.error(f"unknown roles {sorted(unknown)}; known: {sorted(entry)}")

    def target(role: str) -> Path:
        folder = args.volume / args.folders[entry[role]["kind"]]
        folder.mkdir(parents=True, exist_ok=True)
        return folder / entry[role]["name"]

    makers = {
        "high_model": lambda: expert_entries(seed=1),
        "low_model": lambda: expert_entries(seed=2),
        "lightning_high": lora_entries,
        "lightning_low": lora_entries,
        "text_encoder": lambda: (text_encoder_entries(source), []),
    }
    seeds = {"high_model": 1, "low_model": 2, "lightning_high": 3, "lightning_low": 4}
    report: dict[str, Any] = {}
    for role in (r for r in entry if r in wanted):
        path = target(role)
        started = time.monotonic()
        if role in makers:
            entries, fills = makers[role]()
            size = write(path, entries, fills, values=args.values, seed=seeds.get(role, 0), device=device)
        elif role == "vae":
            size = tiny.save(path, tiny.vae())
        elif role == FILM_ROLE:
            size = tiny.save(path, tiny.film())
        else:
            continue  # a role the default graphs do not load (CLIP vision)
        report[role] = {
            "file": str(path.relative_to(args.volume)),
            "bytes": size,
            "published_bytes": entry[role].get("size"),
            "seconds": round(time.monotonic() - started, 2),
        }
        if args.check and role in ("high_model", "low_model"):
            report[role]["comfyui"] = detect(path)
        print(json.dumps({role: report[role]}), file=sys.stderr, flush=True)
    print(json.dumps(report, indent=1))
    return 0


comfy: Any = None
torch: Any = None

if __name__ == "__main__":
    sys.exit(main())
