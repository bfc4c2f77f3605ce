"""Worker settings pointed at a ComfyUI emulator, for in-process handler tests."""

from __future__ import annotations

from pathlib import Path

from worker.config import Settings


def settings_for(comfy_url: str, volume: Path, **env: str) -> Settings:
    host, port = comfy_url.split("//")[1].rsplit(":", 1)
    return Settings.from_env(
        {
            "COMFY_HOST": host,
            "COMFY_PORT": port,
            "VOLUME_ROOT": str(volume),
            "COMFY_START_TIMEOUT_S": "5",
            **env,
        }
    )
