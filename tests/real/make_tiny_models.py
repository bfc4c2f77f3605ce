"""Write tiny random-weight models that the real ComfyUI's loaders accept, in the worker's volume layout.

Run with the ComfyUI venv's Python (the project's Python has no torch), from anywhere:

    <venv>/bin/python make_tiny_models.py --comfyui <ComfyUI source> --manifest <manifest.json> --volume <dir>

It builds each state dict from ComfyUI's own classes (imported from the given source), so that the shapes are
the ones ComfyUI detects and loads: Wan experts (a 2-layer ``WanModel``), the Wan 2.1 VAE, UMT5-XXL (every XXL
tensor, as fp8 zeros), a CLIP vision ViT-L (zeros), FILM frame interpolation, and LoRAs for the experts. The
default files take the manifest's names, so that a job naming no models uses them. Files are written as
safetensors by a small streaming writer: zero tensors become holes in a sparse file, so the 5.7 GB text encoder
takes seconds and little disk.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import struct
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

EXPERT_CONFIG = {
    "model_type": "t2v",
    "in_dim": 36,
    "out_dim": 16,
    "dim": 128,
    "ffn_dim": 256,
    "text_dim": 4096,
    "num_heads": 1,
    "num_layers": 2,
}
VAE_CONFIG = {
    "dim": 96,
    "z_dim": 16,
    "dim_mult": [1, 2, 4, 4],
    "num_res_blocks": 2,
    "attn_scales": [],
    "temperal_downsample": [False, True, True],
}
LORA_RANK = 4
EXTRA_LORAS = (
    "style_high.safetensors",
    "style_low.safetensors",
    "motion_high.safetensors",
    "motion_low.safetensors",
    "detail_high.safetensors",
    "detail_low.safetensors",
    "light_high.safetensors",
    "light_low.safetensors",
)
CLIP_VISION = "tiny_clip_vision_vitl.safetensors"
FILM = "tiny_film.safetensors"
SPIECE_SENTENCES = (
    "a red fox runs through the snow",
    "a cat sits on a window in the sun",
    "the camera pans over a quiet lake at dawn",
    "a small boat drifts on the sea under a grey sky",
    "children play in a park with a yellow ball",
    "blurry, low quality, static, still frame, worst quality",
)

DTYPE_NAMES: dict[str, str] = {
    "torch.float16": "F16",
    "torch.bfloat16": "BF16",
    "torch.float32": "F32",
    "torch.float8_e4m3fn": "F8_E4M3",
    "torch.uint8": "U8",
}


@dataclass
class Entry:
    """One tensor of a safetensors file: its bytes, or ``None`` for all zeros (written as a hole)."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    nbytes: int
    data: bytes | None


def write_safetensors(path: Path, entries: Iterable[Entry], metadata: dict[str, str] | None = None) -> int:
    """Stream ``entries`` into ``path`` (through a temporary name); returns the file size."""
    items = list(entries)
    header: dict[str, Any] = {"__metadata__": metadata} if metadata else {}
    offset = 0
    for item in items:
        header[item.name] = {
            "dtype": item.dtype,
            "shape": list(item.shape),
            "data_offsets": [offset, offset + item.nbytes],
        }
        offset += item.nbytes
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    tmp = path.with_name(f".{path.name}.part")
    with open(tmp, "wb") as out:
        out.write(struct.pack("<Q", len(raw)))
        out.write(raw)
        for item in items:
            if item.data is None:
                out.seek(item.nbytes, os.SEEK_CUR)
            else:
                if len(item.data) != item.nbytes:
                    raise ValueError(f"{item.name}: {len(item.data)} bytes, expected {item.nbytes}")
                out.write(item.data)
        out.truncate()
    os.replace(tmp, path)
    return 8 + len(raw) + offset


def tensor_entry(name: str, tensor: Any) -> Entry:
    data = tensor.detach().contiguous().cpu().reshape(-1).view(torch.uint8).numpy().tobytes()
    return Entry(name, DTYPE_NAMES[str(tensor.dtype)], tuple(tensor.shape), len(data), data)


def is_norm(name: str) -> bool:
    """A normalisation layer's scale: ``...norm*.weight`` or a Wan VAE ``...gamma``."""
    parts = name.split(".")
    return parts[-1] == "gamma" or (parts[-1] == "weight" and len(parts) > 1 and "norm" in parts[-2])


def random_state_dict(module: Any, *, seed: int, dtype: Any) -> dict[str, Any]:
    """Norm weights 1, biases 0, everything else N(0, 0.02): values that stay finite through the network."""
    generator = torch.Generator().manual_seed(seed)
    out = {}
    for name, value in module.state_dict().items():
        if is_norm(name):
            tensor = torch.ones(value.shape)
        elif name.endswith(".bias"):
            tensor = torch.zeros(value.shape)
        else:
            tensor = torch.randn(value.shape, generator=generator) * 0.02
        out[name] = tensor.to(dtype)
    return out


def save(path: Path, state: dict[str, Any]) -> int:
    return write_safetensors(path, (tensor_entry(k, v) for k, v in state.items()))


def meta_entries(module: Any, *, dtype: Any, ones: Any) -> list[Entry]:
    """Entries for every tensor of ``module`` (built on the meta device): zeros, or ones where ``ones(name)``."""
    itemsize = torch.empty((), dtype=dtype).element_size()
    entries = []
    for name, value in module.state_dict().items():
        shape = tuple(value.shape)
        count = 1
        for size in shape:
            count *= size
        if ones(name):
            entries.append(tensor_entry(name, torch.ones(shape, dtype=dtype)))
        else:
            entries.append(Entry(name, DTYPE_NAMES[str(dtype)], shape, count * itemsize, None))
    return entries


def expert(seed: int) -> dict[str, Any]:
    from comfy.ldm.wan.model import WanModel

    model = WanModel(
        **EXPERT_CONFIG, device="cpu", dtype=torch.float32, operations=comfy.ops.disable_weight_init
    )
    return random_state_dict(model, seed=seed, dtype=torch.float16)


def lora(seed: int) -> dict[str, Any]:
    generator = torch.Generator().manual_seed(seed)
    dim = int(EXPERT_CONFIG["dim"])
    state = {}
    for block in range(int(EXPERT_CONFIG["num_layers"])):
        for proj in ("q", "k", "v", "o"):
            key = f"diffusion_model.blocks.{block}.self_attn.{proj}"
            state[f"{key}.lora_up.weight"] = (torch.randn(dim, LORA_RANK, generator=generator) * 0.01).half()
            state[f"{key}.lora_down.weight"] = (
                torch.randn(LORA_RANK, dim, generator=generator) * 0.01
            ).half()
            state[f"{key}.alpha"] = torch.tensor(float(LORA_RANK)).half()
    return state


def vae() -> dict[str, Any]:
    from comfy.ldm.wan.vae import WanVAE

    return random_state_dict(WanVAE(**VAE_CONFIG), seed=3, dtype=torch.float16)


def film() -> dict[str, Any]:
    from comfy_extras.frame_interpolation_models.film_net import FILMNet

    return random_state_dict(FILMNet(), seed=5, dtype=torch.float16)


def spiece_model() -> bytes:
    import sentencepiece

    model = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(SPIECE_SENTENCES),
        model_writer=model,
        model_type="unigram",
        vocab_size=40,
        hard_vocab_limit=False,
        character_coverage=1.0,
        pad_id=0,
        eos_id=1,
        unk_id=2,
        bos_id=-1,
        minloglevel=2,
    )
    return model.getvalue()


def text_encoder(path: Path, source: Path) -> int:
    """UMT5-XXL as ComfyUI builds it for CLIPLoader type ``wan``: every tensor, fp8 zeros, layer norms ones."""
    import comfy.text_encoders.t5 as t5

    config = json.loads((source / "comfy" / "text_encoders" / "umt5_config_xxl.json").read_text())
    with torch.device("meta"):
        model = t5.T5(config, dtype=torch.float8_e4m3fn, device="meta", operations=comfy.ops.manual_cast)
    entries = meta_entries(model, dtype=torch.float8_e4m3fn, ones=lambda name: "layer_norm" in name)
    spiece = spiece_model()
    entries.append(Entry("spiece_model", "U8", (len(spiece),), len(spiece), spiece))
    return write_safetensors(path, entries)


def clip_vision(path: Path, source: Path) -> int:
    """A CLIP vision ViT-L/14 (the smallest CLIPVisionLoader detects): fp16 zeros, layer norms ones."""
    import comfy.clip_model

    config = json.loads((source / "comfy" / "clip_vision_config_vitl.json").read_text())
    with torch.device("meta"):
        model = comfy.clip_model.CLIPVisionModelProjection(
            config, torch.float16, "meta", comfy.ops.manual_cast
        )
    return write_safetensors(path, meta_entries(model, dtype=torch.float16, ones=is_norm))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--comfyui", type=Path, required=True, help="ComfyUI's source folder")
    parser.add_argument("--manifest", type=Path, required=True, help="src/worker/models/manifest.json")
    parser.add_argument("--volume", type=Path, required=True, help="the folder to fill")
    parser.add_argument(
        "--folders", type=json.loads, required=True, help="JSON: ComfyUI folder kind -> the volume's folder"
    )
    args = parser.parse_args(argv)

    source = args.comfyui.resolve()
    sys.path.insert(0, str(source))
    global comfy, torch
    from comfy.cli_args import args as comfy_args

    comfy_args.cpu = True
    import comfy.ops
    import torch

    torch.manual_seed(0)
    names = {f["role"]: f["name"] for f in json.loads(args.manifest.read_text())["files"] if f.get("role")}
    folders: dict[str, str] = args.folders
    folder = {kind: args.volume / sub for kind, sub in folders.items()}
    for path in folder.values():
        path.mkdir(parents=True, exist_ok=True)

    written: dict[str, int] = {}

    def record(kind: str, name: str, size: int) -> None:
        written[f"{folders[kind]}/{name}"] = size

    record(
        "diffusion_models",
        names["high_model"],
        save(folder["diffusion_models"] / names["high_model"], expert(1)),
    )
    record(
        "diffusion_models",
        names["low_model"],
        save(folder["diffusion_models"] / names["low_model"], expert(2)),
    )
    record("vae", names["vae"], save(folder["vae"] / names["vae"], vae()))
    record("frame_interpolation", FILM, save(folder["frame_interpolation"] / FILM, film()))
    for index, name in enumerate((names["lightning_high"], names["lightning_low"], *EXTRA_LORAS)):
        record("loras", name, save(folder["loras"] / name, lora(100 + index)))
    record("clip_vision", CLIP_VISION, clip_vision(folder["clip_vision"] / CLIP_VISION, source))
    te = names["text_encoder"]
    record("text_encoders", te, text_encoder(folder["text_encoders"] / te, source))
    print(json.dumps(written, indent=1))
    return 0


comfy: Any = None
torch: Any = None

if __name__ == "__main__":
    sys.exit(main())
