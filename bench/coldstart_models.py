"""Write the cold-start benchmark's models: a few GB of real (non-sparse) random weights that ComfyUI loads, under
the default models' names, in the worker's volume layout. Run with ComfyUI's Python (the project's has no torch):

    <venv>/bin/python bench/coldstart_models.py --comfyui <ComfyUI source> --volume <dir>

- the two experts: a Wan I2V DiT (``WanModel``, in_dim 36) at Wan 2.1 1.3B's width (dim 1536, FFN 8960, 12
  heads) with 16 blocks: 0.74 billion fp16 parameters, 1.5 GB each;
- the text encoder: UMT5-XXL as ComfyUI detects it for CLIPLoader type ``wan`` (its shared embedding, the final
  norm, blocks 0, 1 and 23, the tokenizer), fp8: 1.6 GB. ComfyUI builds the whole XXL model and loads the
  tensors the file has (it logs the others as missing): the full 6.7 GB file would not fit beside ComfyUI in
  the 24 GB of the machines the benchmark runs on;
- the Wan 2.1 VAE (its real architecture, random fp16 weights, 254 MB) and the two Lightning LoRAs (rank 64
  on every linear layer of the experts' blocks, 93 MB each).

Every tensor is written from random values (norm scales 1, biases 0): nothing is a hole, so every byte is read
from the volume. Values are small (N(0, 0.02), fp8 under 0.03) so that a job runs to a finite video.
"""

from __future__ import annotations

import argparse
import json
import struct
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.real import make_tiny_models as tiny

EXPERT = {**tiny.EXPERT_CONFIG, "dim": 1536, "ffn_dim": 8960, "num_heads": 12, "num_layers": 16}
LORA_RANK = 64
TE_BLOCKS = (0, 1, 23)  # block 23's wi_1 (10240 rows) is what makes ComfyUI detect UMT5-XXL
CHUNK = 64 << 20

torch: Any = None
comfy: Any = None

Tensor = tuple[str, str, tuple[int, ...], Callable[[], Iterator[bytes]]]


def write(path: Path, tensors: list[Tensor]) -> int:
    """A safetensors file, its tensors' bytes streamed from each one's generator; returns the size."""
    header: dict[str, Any] = {}
    offset = 0
    sizes = {"F16": 2, "F8_E4M3": 1, "U8": 1}
    for name, dtype, shape, _ in tensors:
        nbytes = sizes[dtype]
        for size in shape:
            nbytes *= size
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    tmp = path.with_name(f".{path.name}.part")
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(tmp, "wb") as out:
        out.write(struct.pack("<Q", len(raw)) + raw)
        for name, _, _, data in tensors:
            start = out.tell()
            for piece in data():
                out.write(piece)
            expected = header[name]["data_offsets"]
            assert out.tell() - start == expected[1] - expected[0], name
    tmp.rename(path)
    return path.stat().st_size


def fp16(shape: tuple[int, ...], kind: str, seed: int) -> Callable[[], Iterator[bytes]]:
    """fp16 values: ones, zeros, or N(0, 0.02), made a chunk of rows at a time."""

    def data() -> Iterator[bytes]:
        generator = torch.Generator().manual_seed(seed)
        rows = shape[0] if shape else 1
        per_row = max(1, (CHUNK // 2) // max(1, _count(shape[1:])))
        for start in range(0, rows, per_row):
            part = (min(per_row, rows - start), *shape[1:]) if shape else ()
            if kind == "ones":
                tensor = torch.ones(part, dtype=torch.float16)
            elif kind == "zeros":
                tensor = torch.zeros(part, dtype=torch.float16)
            else:
                tensor = (torch.randn(part, generator=generator) * 0.02).half()
            yield tensor.reshape(-1).view(torch.uint8).numpy().tobytes()

    return data


def fp8(nbytes: int, ones: bool) -> Callable[[], Iterator[bytes]]:
    """fp8 e4m3fn bytes: 1.0 (0x38), or small random values (exponent field 0 or 1: |x| < 0.03)."""

    def data() -> Iterator[bytes]:
        if ones:
            yield b"\x38" * nbytes
            return
        pattern = (torch.randint(0, 256, (CHUNK,), dtype=torch.uint8) & 0x8F).numpy().tobytes()
        for start in range(0, nbytes, CHUNK):
            yield pattern[: min(CHUNK, nbytes - start)]

    return data


def _count(shape: tuple[int, ...]) -> int:
    count = 1
    for size in shape:
        count *= size
    return count


def kind_of(name: str) -> str:
    return "ones" if tiny.is_norm(name) else "zeros" if name.endswith(".bias") else "random"


def expert(seed: int) -> list[Tensor]:
    from comfy.ldm.wan.model import WanModel

    with torch.device("meta"):
        model = WanModel(
            **EXPERT, device="meta", dtype=torch.float16, operations=comfy.ops.disable_weight_init
        )
    return [
        (name, "F16", tuple(v.shape), fp16(tuple(v.shape), kind_of(name), seed * 1000 + i))
        for i, (name, v) in enumerate(model.state_dict().items())
    ]


def lora(seed: int) -> list[Tensor]:
    """Rank-64 LoRA pairs on every linear layer of the experts' blocks (the Lightning LoRAs' layout)."""
    from comfy.ldm.wan.model import WanModel

    with torch.device("meta"):
        model = WanModel(
            **EXPERT, device="meta", dtype=torch.float16, operations=comfy.ops.disable_weight_init
        )
    tensors: list[Tensor] = []
    for i, (name, value) in enumerate(model.state_dict().items()):
        if not name.startswith("blocks.") or not name.endswith(".weight") or value.dim() != 2:
            continue
        key = f"diffusion_model.{name.removesuffix('.weight')}"
        out_f, in_f = value.shape
        tensors.append(
            (f"{key}.lora_up.weight", "F16", (out_f, LORA_RANK), fp16((out_f, LORA_RANK), "r", seed + i))
        )
        tensors.append(
            (f"{key}.lora_down.weight", "F16", (LORA_RANK, in_f), fp16((LORA_RANK, in_f), "r", -i))
        )
    return tensors


def text_encoder(source: Path) -> list[Tensor]:
    import comfy.text_encoders.t5 as t5

    config = json.loads((source / "comfy" / "text_encoders" / "umt5_config_xxl.json").read_text())
    with torch.device("meta"):
        model = t5.T5(config, dtype=torch.float8_e4m3fn, device="meta", operations=comfy.ops.manual_cast)
    kept = tuple(f"encoder.block.{b}." for b in TE_BLOCKS)
    tensors: list[Tensor] = []
    for name, value in model.state_dict().items():
        if "block." in name and not name.startswith(kept):
            continue
        shape = tuple(value.shape)
        tensors.append((name, "F8_E4M3", shape, fp8(_count(shape), "layer_norm" in name)))
    spiece = tiny.spiece_model()
    tensors.append(("spiece_model", "U8", (len(spiece),), lambda: iter([spiece])))
    return tensors


def vae() -> list[Tensor]:
    from comfy.ldm.wan.vae import WanVAE

    with torch.device("meta"):
        model = WanVAE(**tiny.VAE_CONFIG)
    return [
        (name, "F16", tuple(v.shape), fp16(tuple(v.shape), kind_of(name), 7000 + i))
        for i, (name, v) in enumerate(model.state_dict().items())
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--comfyui", type=Path, required=True)
    parser.add_argument("--volume", type=Path, required=True)
    args = parser.parse_args(argv)
    source = args.comfyui.resolve()
    sys.path.insert(0, str(source))
    global comfy, torch
    from comfy.cli_args import args as comfy_args

    comfy_args.cpu = True
    import comfy.ops
    import torch

    tiny.torch, tiny.comfy = torch, comfy
    torch.manual_seed(0)
    names = {
        f["role"]: f["name"] for f in json.loads((Path(__file__).parents[1] / MANIFEST).read_text())["files"]
    }
    files = {
        f"models/{names['high_model']}": lambda: expert(1),
        f"models/{names['low_model']}": lambda: expert(2),
        f"text_encoders/{names['text_encoder']}": lambda: text_encoder(source),
        f"vae/{names['vae']}": vae,
        f"loras/{names['lightning_high']}": lambda: lora(100),
        f"loras/{names['lightning_low']}": lambda: lora(200),
    }
    written = {name: write(args.volume / name, make()) for name, make in files.items()}
    print(json.dumps(written, indent=1))
    return 0


MANIFEST = "src/worker/models/manifest.json"

if __name__ == "__main__":
    sys.exit(main())
