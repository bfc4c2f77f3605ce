"""Settings from the environment, read once into a frozen object.

Each setting is declared once below (type, default, bounds, Hub label, and its docstring as the description);
its variable is its name in capitals unless an alias is given. The README's environment table and
.runpod/hub.json's worker entries are generated from these declarations (:mod:`worker.settingsdoc`). Code
takes the :class:`Settings` object (or one value) as a parameter, so tests build one with plain values:
``Settings(comfy_port=9000)``, or ``Settings.from_env({"COMFY_PORT": "9000"})``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AliasChoices, AliasGenerator, BeforeValidator, Field, ValidationError
from pydantic_core import ErrorDetails
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

REPO = Path(__file__).resolve().parents[2]  # the repository, or /app in the image (not an installed package)


def default_workflows_dir() -> Path:
    """``worker/workflows`` in an installed package (a wheel maps the repository's top-level ``workflows/``
    there: pyproject.toml), else the repository's ``workflows/`` (a checkout, or ``/app`` in the image)."""
    packaged = Path(__file__).resolve().parent / "workflows"
    return packaged if packaged.is_dir() else REPO / "workflows"


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


class SettingsError(ValueError):
    """An environment variable holds a value the worker cannot use."""


def setting(default: Any, label: str, *, ge: float | None = None, env: Any = None, **extra: Any) -> Any:
    """A setting, shown in the Hub as ``label``. ``env``: its variable, when not its name in capitals.
    ``extra``: ``basic`` (not among the Hub's advanced settings), ``secret`` (kept out of repr), ``shown``
    (the README's default when it is no plain value; the Hub's is then empty, meaning the default), ``image``
    (the value the container image sets)."""
    info = {"label": label, **extra}
    return Field(default, validation_alias=env, ge=ge, repr=not extra.get("secret"), json_schema_extra=info)


def _hosts(value: Any) -> Any:
    return (
        tuple(h.strip().lower() for h in value.split(",") if h.strip()) if isinstance(value, str) else value
    )


LogLevel = Annotated[Literal["DEBUG", "INFO", "WARNING", "ERROR"], BeforeValidator(str.upper)]


class Settings(BaseSettings):
    """Everything the worker reads from its environment."""

    model_config = SettingsConfigDict(
        frozen=True,
        extra="ignore",
        alias_generator=AliasGenerator(validation_alias=str.upper),
        validate_by_name=True,
        use_attribute_docstrings=True,
    )

    # ComfyUI
    comfy_host: str = setting("127.0.0.1", "ComfyUI host", env=AliasChoices("COMFY_HOST", "SERVER_ADDRESS"))
    """Where the worker finds ComfyUI: host, `host:port` or URL (also read as `SERVER_ADDRESS`). The container
    starts its own ComfyUI on 127.0.0.1."""
    comfy_port: int = setting(8188, "ComfyUI port", ge=1)
    """ComfyUI's port."""
    comfy_start_timeout_s: float = setting(600.0, "ComfyUI start deadline (s)", ge=0)
    """How long a job, start.sh and the start check wait for ComfyUI to answer (then they fail)."""
    comfy_idle_timeout_s: float = setting(900.0, "ComfyUI silence limit (s)", ge=0.1)
    """A job fails with `timeout` when ComfyUI sends nothing for this long."""
    job_timeout_s: float = setting(3600.0, "Job timeout (s)", ge=1)
    """The whole job's deadline: a job that runs longer is interrupted and fails."""
    http_timeout_s: float = setting(30.0, "ComfyUI HTTP timeout (s)", ge=0.1, env="COMFY_HTTP_TIMEOUT_S")
    """Timeout of each HTTP call to ComfyUI."""

    # Files
    volume_root: Path = setting(Path("/runpod-volume"), "Volume root")
    """Where the network volume is mounted: models under `models/` (diffusion models), `loras/`,
    `text_encoders/`, `vae/`, `clip_vision/`, or ComfyUI's `models/<kind>/` layout."""
    workflows_dir: Path = setting(default_workflows_dir(), "Workflows folder", image="/app/workflows")
    """Where the graph templates (`wan22_i2v.json`, `wan22_flf2v.json`) are; an installed package carries its
    own copy, used by default."""
    comfy_input_dir: Path | None = setting(None, "ComfyUI input folder", image="/opt/ComfyUI/input")
    """ComfyUI's input folder; when set, each job's uploads there are deleted after the job."""
    comfy_output_dir: Path | None = setting(None, "ComfyUI output folder", image="/opt/ComfyUI/output")
    """ComfyUI's output folder; when set, each job's video there is deleted once delivered."""

    # Inputs
    max_input_image_mb: float = setting(20.0, "Largest input image (MB)", ge=0.001)
    """Largest input image or video to extend (URL, base64 or path)."""
    max_input_image_pixels: int = setting(8192 * 8192, "Largest input image (pixels)", ge=1)
    """Largest input image (or frame of a video to extend) in pixels (8192 x 8192)."""
    allow_private_urls: bool = setting(False, "Allow private URLs")
    """Let image and model URLs reach private, loopback or link-local addresses (local testing only)."""

    # Outputs
    inline_output_max_mb: float = setting(15.0, "Largest inline video (MB)", ge=0)
    """Largest video returned inline as base64; a larger one fails with a hint to configure a bucket."""
    bucket_endpoint_url: str = setting("", "Bucket endpoint URL", basic=True)
    """S3-compatible endpoint, e.g. `https://<bucket>.s3.<region>.amazonaws.com` (or without the bucket, with
    `BUCKET_NAME`). With the two keys, videos are uploaded and returned as `video_url`."""
    bucket_access_key_id: str = setting("", "Bucket access key ID", basic=True, secret=True)
    """The bucket's access key ID. Never logged."""
    bucket_secret_access_key: str = setting("", "Bucket secret access key", basic=True, secret=True)
    """The bucket's secret access key. Never logged."""
    bucket_name: str = setting("", "Bucket name")
    """The bucket, when the endpoint URL does not name it."""
    bucket_url_expiry_s: int = setting(7 * 24 * 3600, "Video URL lifetime (s)", ge=1)
    """Validity of the returned presigned URL (at most 7 days)."""

    # Models
    allowed_model_hosts: Annotated[tuple[str, ...], BeforeValidator(_hosts)] = setting(
        DEFAULT_ALLOWED_MODEL_HOSTS, "Allowed model hosts", shown="Hugging Face, Civitai and their CDN hosts"
    )
    """Comma-separated hosts (and their subdomains) that model URLs and their redirects may name."""
    allow_pickle_models: bool = setting(False, "Allow pickle model files")
    """Allow `.ckpt`, `.pt`, `.pth`, `.bin` model files, which can run code when loaded."""
    allow_http_model_urls: bool = setting(False, "Allow http model URLs")
    """Allow plain http model URLs (local testing only)."""
    max_model_gb: float = setting(40.0, "Largest model file (GB)", ge=0.001)
    """Largest on-demand model download."""
    download_connections: int = setting(8, "Download connections", ge=1)
    """Connections a Hugging Face (Xet) download starts with; hf_xet then adapts them to the network. A file from
    another host comes in one resumable stream."""
    model_read_timeout_s: float = setting(60.0, "Model read timeout (s)", ge=0.1)
    """How long a model download waits for the server's next bytes before it tries again."""
    model_lock_timeout_s: float = setting(3 * 3600.0, "Model lock timeout (s)", ge=1)
    """How long a worker waits for another worker's download of the same file before it fetches the file itself."""
    models_manifest: Path | None = setting(None, "Models manifest")
    """A JSON file of the shape of the packaged list of default models (name, kind, url, size, sha256) that
    replaces it for `models ensure`, the start check and the read-ahead, e.g. to fetch them from a mirror. Jobs
    name the packaged list's files, so it keeps their names."""
    hf_token: str = setting("", "Hugging Face token", basic=True, secret=True)
    """Token for gated or private Hugging Face files named by a job's URLs (the default models need none); sent
    only to the Hub (`HF_ENDPOINT`), never to its CDN, never logged."""
    civitai_token: str = setting("", "Civitai token", basic=True, secret=True)
    """Token for Civitai model URLs that require one; sent only to Civitai, never logged."""

    allow_workflow: bool = setting(True, "Allow workflow jobs")
    """Run jobs that bring their own ComfyUI graph (`workflow`); `false` refuses them."""

    # RunPod and the process
    allow_cpu: bool = setting(False, "Allow CPU")
    """Let the worker take jobs when ComfyUI reports no CUDA device (testing only); else the start check refuses."""
    warmup: bool = setting(False, "Warm up")
    """Run a tiny job before taking jobs, so that the first finds the models loaded: worth it for active
    (pre-scaled) workers and FlashBoot, not for a worker started by the job it serves (README, "Performance")."""
    warmup_timeout_s: float = setting(600.0, "Warm-up deadline (s)", ge=1)
    """The warm-up's deadline; past it the warm-up is stopped and the worker takes jobs anyway."""
    progress_updates: bool = setting(False, "Progress updates", shown="on when running on RunPod")
    """Send per-step progress through RunPod (a few a second at most)."""
    log_level: LogLevel = setting("INFO", "Log level")
    """The worker's log level."""
    readahead: bool = setting(True, "Read models ahead")
    """While ComfyUI starts, read the default models into the page cache in large parallel reads (within the
    free memory; skipped for files already cached)."""
    retain_freed_memory_mb: int = setting(512, "Memory kept between jobs (MB)", ge=0)
    """Memory freed by a job that the worker keeps for the next one instead of returning it; `0`: glibc's way."""

    @property
    def comfy_url(self) -> str:
        """``http://host:port`` from a host, ``host:port``, ``[v6]`` or URL, with ``comfy_port`` unless given."""
        url = self.comfy_host.rstrip("/")
        url = url if url.startswith(("http://", "https://")) else f"http://{url}"
        return url if ":" in url.split("//", 1)[1].rsplit("]", 1)[-1] else f"{url}:{self.comfy_port}"

    @property
    def bucket_configured(self) -> bool:
        return bool(self.bucket_endpoint_url and self.bucket_access_key_id and self.bucket_secret_access_key)

    @classmethod
    def settings_customise_sources(
        cls, settings_cls: type[BaseSettings], init_settings: PydanticBaseSettingsSource, *_: Any, **__: Any
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """Values come from the constructor only: :meth:`from_env` reads the variables, once."""
        return (init_settings,)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """Read the settings from ``env`` (``os.environ`` by default). An empty variable counts as unset;
        unknown variables are ignored. A bad value raises :class:`SettingsError` naming the variable."""
        values: dict[str, Any] = {k: v.strip() for k, v in (os.environ if env is None else env).items()}
        values = {k: v for k, v in values.items() if v and k.isupper()}
        values.setdefault("PROGRESS_UPDATES", str(bool(values.get("RUNPOD_WEBHOOK_POST_OUTPUT"))))
        try:
            return cls(**values)
        except ValidationError as exc:
            raise SettingsError("; ".join(map(_problem, exc.errors()))) from exc


def _problem(error: ErrorDetails) -> str:
    """``NAME must be <what is allowed>, got '<value>'``, from pydantic's "Input should be ..." message."""
    allowed = (
        "true or false" if error["type"] == "bool_parsing" else error["msg"].removeprefix("Input should be ")
    )
    return f"{error['loc'][0]} must be {allowed.split(', unable')[0]}, got {error['input']!r}"
