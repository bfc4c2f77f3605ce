"""Settings from the environment, read once into a frozen object.

Code that needs a setting takes the :class:`Settings` object (or the one value) as a parameter, so that tests
build one with plain values: ``Settings.from_env({"COMFY_PORT": "9000"})``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

DEFAULT_ALLOWED_MODEL_HOSTS = (
    "huggingface.co",
    "cdn-lfs.huggingface.co",
    "cdn-lfs-us-1.huggingface.co",
    "cdn-lfs-eu-1.huggingface.co",
    "cas-bridge.xethub.hf.co",
    "civitai.com",
    "civitai-delivery-worker-prod.5ac0637cfd0766c97916cefa3764fbdf.r2.cloudflarestorage.com",
    "b2.civitai.com",
)
"""Hosts model URLs may name, and the CDN hosts they redirect to. ``*.hf.co`` style suffixes are matched."""


def _repo_workflows_dir() -> Path:
    return Path(__file__).resolve().parents[2] / "workflows"


class SettingsError(ValueError):
    """An environment variable holds a value the worker cannot use."""


def _bool(env: Mapping[str, str], name: str, default: bool) -> bool:
    raw = env.get(name)
    if raw is None or raw.strip() == "":
        return default
    value = raw.strip().lower()
    if value in {"1", "true", "yes", "on"}:
        return True
    if value in {"0", "false", "no", "off"}:
        return False
    raise SettingsError(f"{name} must be true or false, got {raw!r}")


def _float(env: Mapping[str, str], name: str, default: float, *, minimum: float = 0.0) -> float:
    raw = env.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise SettingsError(f"{name} must be a number, got {raw!r}") from None
    if value < minimum:
        raise SettingsError(f"{name} must be at least {minimum}, got {raw!r}")
    return value


def _int(env: Mapping[str, str], name: str, default: int, *, minimum: int = 0) -> int:
    raw = env.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise SettingsError(f"{name} must be a whole number, got {raw!r}") from None
    if value < minimum:
        raise SettingsError(f"{name} must be at least {minimum}, got {raw!r}")
    return value


def _str(env: Mapping[str, str], name: str, default: str = "") -> str:
    raw = env.get(name)
    return default if raw is None or raw.strip() == "" else raw.strip()


def _path_or_none(env: Mapping[str, str], name: str) -> Path | None:
    raw = _str(env, name)
    return Path(raw) if raw else None


def _list(env: Mapping[str, str], name: str, default: tuple[str, ...]) -> tuple[str, ...]:
    raw = env.get(name)
    if raw is None or raw.strip() == "":
        return default
    return tuple(item.strip().lower() for item in raw.split(",") if item.strip())


@dataclass(frozen=True)
class Settings:
    """Everything the worker reads from its environment. Documented in the README's environment table."""

    # ComfyUI
    comfy_host: str = "127.0.0.1"
    comfy_port: int = 8188
    comfy_start_timeout_s: float = 600.0
    comfy_idle_timeout_s: float = 900.0
    job_timeout_s: float = 3600.0
    http_timeout_s: float = 30.0

    # Files
    volume_root: Path = Path("/runpod-volume")
    workflows_dir: Path = field(default_factory=_repo_workflows_dir)
    comfy_input_dir: Path | None = None
    comfy_output_dir: Path | None = None

    # Inputs
    max_input_image_mb: float = 20.0
    max_input_image_pixels: int = 8192 * 8192
    allow_private_urls: bool = False

    # Outputs
    inline_output_max_mb: float = 15.0
    bucket_endpoint_url: str = ""
    bucket_access_key_id: str = field(default="", repr=False)
    bucket_secret_access_key: str = field(default="", repr=False)
    bucket_name: str = ""
    bucket_url_expiry_s: int = 7 * 24 * 3600

    # Models
    allowed_model_hosts: tuple[str, ...] = DEFAULT_ALLOWED_MODEL_HOSTS
    allow_pickle_models: bool = False
    allow_http_model_urls: bool = False
    max_model_gb: float = 40.0
    download_connections: int = 8
    hf_token: str = field(default="", repr=False)
    civitai_token: str = field(default="", repr=False)
    model_lock_timeout_s: float = 3 * 3600.0

    # RunPod
    progress_updates: bool = False

    # Process
    retain_freed_memory_mb: int = 512

    @property
    def comfy_url(self) -> str:
        host = self.comfy_host
        if host.startswith(("http://", "https://")):
            return (
                host.rstrip("/") if ":" in host.split("//", 1)[1] else f"{host.rstrip('/')}:{self.comfy_port}"
            )
        if ":" in host and not host.startswith("["):
            return f"http://{host}"
        return f"http://{host}:{self.comfy_port}"

    @property
    def bucket_configured(self) -> bool:
        return bool(self.bucket_endpoint_url and self.bucket_access_key_id and self.bucket_secret_access_key)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """Read the settings from ``env`` (``os.environ`` by default); unknown variables are ignored."""
        e = os.environ if env is None else env
        host = _str(e, "COMFY_HOST") or _str(e, "SERVER_ADDRESS", "127.0.0.1")
        return cls(
            comfy_host=host,
            comfy_port=_int(e, "COMFY_PORT", 8188, minimum=1),
            comfy_start_timeout_s=_float(e, "COMFY_START_TIMEOUT_S", 600.0),
            comfy_idle_timeout_s=_float(e, "COMFY_IDLE_TIMEOUT_S", 900.0, minimum=0.1),
            job_timeout_s=_float(e, "JOB_TIMEOUT_S", 3600.0, minimum=1.0),
            http_timeout_s=_float(e, "COMFY_HTTP_TIMEOUT_S", 30.0, minimum=0.1),
            volume_root=Path(_str(e, "VOLUME_ROOT", "/runpod-volume")),
            workflows_dir=Path(_str(e, "WORKFLOWS_DIR", str(_repo_workflows_dir()))),
            comfy_input_dir=_path_or_none(e, "COMFY_INPUT_DIR"),
            comfy_output_dir=_path_or_none(e, "COMFY_OUTPUT_DIR"),
            max_input_image_mb=_float(e, "MAX_INPUT_IMAGE_MB", 20.0, minimum=0.001),
            max_input_image_pixels=_int(e, "MAX_INPUT_IMAGE_PIXELS", 8192 * 8192, minimum=1),
            allow_private_urls=_bool(e, "ALLOW_PRIVATE_URLS", False),
            inline_output_max_mb=_float(e, "INLINE_OUTPUT_MAX_MB", 15.0),
            bucket_endpoint_url=_str(e, "BUCKET_ENDPOINT_URL"),
            bucket_access_key_id=_str(e, "BUCKET_ACCESS_KEY_ID"),
            bucket_secret_access_key=_str(e, "BUCKET_SECRET_ACCESS_KEY"),
            bucket_name=_str(e, "BUCKET_NAME"),
            bucket_url_expiry_s=_int(e, "BUCKET_URL_EXPIRY_S", 7 * 24 * 3600, minimum=1),
            allowed_model_hosts=_list(e, "ALLOWED_MODEL_HOSTS", DEFAULT_ALLOWED_MODEL_HOSTS),
            allow_pickle_models=_bool(e, "ALLOW_PICKLE_MODELS", False),
            allow_http_model_urls=_bool(e, "ALLOW_HTTP_MODEL_URLS", False),
            max_model_gb=_float(e, "MAX_MODEL_GB", 40.0, minimum=0.001),
            download_connections=_int(e, "DOWNLOAD_CONNECTIONS", 8, minimum=1),
            hf_token=_str(e, "HF_TOKEN"),
            civitai_token=_str(e, "CIVITAI_TOKEN"),
            model_lock_timeout_s=_float(e, "MODEL_LOCK_TIMEOUT_S", 3 * 3600.0, minimum=1.0),
            progress_updates=_bool(e, "PROGRESS_UPDATES", bool(_str(e, "RUNPOD_WEBHOOK_POST_OUTPUT"))),
            retain_freed_memory_mb=_int(e, "RETAIN_FREED_MEMORY_MB", 512),
        )
