"""ComfyUI's cache keeps the model loaders (28 GB of experts) between jobs, whichever mode they are."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from tests.emulator import DEFAULT_MODELS, Emulator
from tests.support.images import data_uri, image_bytes
from worker.config import Settings
from worker.handler import handle_job

LOADERS = {"high_model", "low_model", "text_encoder", "vae"}


def test_loaders_stay_cached_across_modes_and_lora_changes(tmp_path: Path) -> None:
    models = {k: list(v) for k, v in DEFAULT_MODELS.items()}
    models["loras"] = [*models.get("loras", []), "style_high.safetensors", "style_low.safetensors"]
    with Emulator(models=models) as emu:
        host, port = emu.url.split("//")[1].rsplit(":", 1)
        settings = Settings.from_env({"COMFY_HOST": host, "COMFY_PORT": port, "VOLUME_ROOT": str(tmp_path)})
        base: dict[str, Any] = {"prompt": "p", "width": 128, "height": 128, "length": 9, "seed": 1}
        start = data_uri(image_bytes(color=(200, 0, 0)))
        end = data_uri(image_bytes(color=(0, 0, 200)))
        pair = {"high": "style_high.safetensors", "low": "style_low.safetensors"}

        def run(**fields: Any) -> dict[str, Any]:
            result = asyncio.run(
                handle_job({"id": "c", "input": {**base, "image_base64": start, **fields}}, settings)
            )
            assert "error" not in result, result
            return result

        first = run(lora_pairs=[{**pair, "high_weight": 1.0}])
        assert not LOADERS & set(first["cached_nodes"])
        flf2v = run(end_image_base64=end, lora_pairs=[{**pair, "high_weight": 1.0}])
        assert set(flf2v["cached_nodes"]) >= LOADERS
        assert {"lightning_high", "lightning_low", "lora_high_1", "lora_low_1"} <= set(flf2v["cached_nodes"])
        reweighted = run(lora_pairs=[{**pair, "high_weight": 0.5}])
        assert set(reweighted["cached_nodes"]) >= LOADERS
        assert "lora_high_1" not in reweighted["cached_nodes"]
        assert "lora_low_1" in reweighted["cached_nodes"]
