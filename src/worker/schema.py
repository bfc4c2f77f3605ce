"""The job contract (v1): what a job may ask for, its defaults, bounds and rounding rules.

Pure data validation: of the worker, it reads only the model roles and the file-name rule, which import
nothing themselves. A validated :class:`JobInput` has every
value concrete (defaults that depend on ``lightning`` filled in, the seed drawn, sizes rounded) and lists what
was adjusted, so that the result can say what was used.
"""

from __future__ import annotations

import json
import math
import re
import secrets
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    create_model,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from .models import names as modelnames
from .models import roles
from .models.volume import Kind

WAN_NEGATIVE_PROMPT = (
    "色调艳丽，过曝，静态，细节模糊不清，字幕，风格，作品，画作，画面，静止，整体发灰，最差质量，低质量，JPEG压缩残留，"
    "丑陋的，残缺的，多余的手指，画得不好的手部，画得不好的脸部，畸形的，毁容的，形态畸形的肢体，手指融合，静止不动的画面，"
    "杂乱的背景，三条腿，背景人很多，倒着走"
)
"""Wan's usual negative prompt, as its authors publish it."""

MIN_SIDE, MAX_SIDE = 128, 1920
MIN_LENGTH, MAX_LENGTH = 5, 801
CONTEXT_WINDOW = 81
"""Frames in one context window: longer videos are sampled in overlapping windows of this length."""
MAX_LORA_PAIRS = 4
MAX_SEED = 2**64 - 1
RANDOM_SEED_LIMIT = 2**53
"""Drawn seeds stay below 2**53 so that JavaScript clients read them exactly."""
MAX_PROMPT_CHARS = 20_000

LIGHTNING_STEPS, LIGHTNING_CFG = 4, 1.0
PLAIN_STEPS, PLAIN_CFG = 20, 3.5

OutputMode = Literal["auto", "base64", "url"]
Resolution = Literal["480p", "720p"]
RESOLUTIONS: dict[str, int] = {"480p": 480, "720p": 720}
"""Resolution presets: pixels on the video's short side."""
DEFAULT_CRF = 19
MAX_INTERPOLATION = 16
MAX_OUTPUT_FRAMES = 1601
"""Frames the delivered video may have after interpolation: decoded frames are held as 32-bit floats, so 1601
frames of 832x480 already take 7.7 GB of RAM."""
MAX_OUTPUT_FPS = 120.0
"""ComfyUI's CreateVideo takes at most 120 fps."""
MAX_WORKFLOW_NODES, MAX_WORKFLOW_BYTES, MAX_WORKFLOW_FILES = 1000, 2 * 1024 * 1024, 16
EXTEND_FRAMES = 5
IMAGE_SOURCES = ("image_url", "image_base64", "image_path")
END_SOURCES = ("end_image_url", "end_image_base64", "end_image_path")
EXTEND_SOURCES = ("extend_video_url", "extend_video_base64", "extend_video_path")


def round_to_multiple(value: int, multiple: int) -> int:
    """Nearest multiple of ``multiple`` (halves round up)."""
    return math.floor(value / multiple + 0.5) * multiple


def round_to_4n1(value: int) -> int:
    """Nearest value of the form 4n+1 (halves round up), the frame counts Wan's VAE can encode."""
    return 4 * math.floor((value - 1) / 4 + 0.5) + 1


def field_problem(field: str, message: str) -> PydanticCustomError:
    """A rule broken by the input as a whole, reported against ``field``: the field travels as data in the
    error's context, so that :func:`describe_errors` need not parse it back out of the message."""
    return PydanticCustomError("field_problem", "{message}", {"field": field, "message": message})


def check_model_name(value: str | None, info: ValidationInfo) -> str | None:
    """A model file name by :mod:`worker.modelnames`' rule; pickle formats when the validation context says
    ``allow_pickle_models``."""
    allow_pickle = bool((info.context or {}).get("allow_pickle_models"))
    if value is not None and (problem := modelnames.name_problem(value, allow_pickle=allow_pickle)):
        raise ValueError(f"{problem}; model file names are {modelnames.RULE}")
    return value


def check_url_shape(value: str | None) -> str | None:
    """A URL field: an absolute http(s) URL of sane length. Reachability and policy are checked later."""
    if value is None:
        return None
    value = value.strip()
    if len(value) > 4096:
        raise ValueError("must be at most 4096 characters")
    if not re.match(r"^https?://[^\s/]", value, flags=re.IGNORECASE):
        raise ValueError("must be an http:// or https:// URL")
    try:
        urlsplit(value).port  # noqa: B018 - raises on a port that is no number or out of range
    except ValueError as exc:
        raise ValueError(f"is not a valid URL ({exc})") from None
    return value


ModelName = Annotated[str | None, AfterValidator(check_model_name)]
Url = Annotated[str | None, AfterValidator(check_url_shape)]


def _doc(default: str) -> Any:
    """For a field whose default depends on other fields: the schema shows this text instead of ``null``."""

    def extra(schema: dict[str, Any]) -> None:
        schema.pop("default", None)
        schema["x-default"] = default

    return extra


class Adjustment(BaseModel):
    """A value the worker changed to one the model can use."""

    field: str
    requested: Any
    used: Any
    reason: str


class LoraPair(BaseModel):
    """One LoRA for each expert: ``high`` on the high-noise expert, ``low`` on the low-noise expert."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    high: ModelName = Field(default=None, description="LoRA file on the volume for the high-noise expert")
    low: ModelName = Field(default=None, description="LoRA file on the volume for the low-noise expert")
    high_weight: float = Field(default=1.0, ge=-5.0, le=5.0, allow_inf_nan=False, description="its strength")
    low_weight: float = Field(default=1.0, ge=-5.0, le=5.0, allow_inf_nan=False, description="its strength")
    high_url: Url = Field(
        default=None,
        description="download the high LoRA into loras/ first (named after the URL, or after high)",
    )
    low_url: Url = Field(
        default=None,
        description="download the low LoRA into loras/ first (named after the URL, or after low)",
    )

    @model_validator(mode="after")
    def _one_side_at_least(self) -> LoraPair:
        if not (self.high or self.high_url or self.low or self.low_url):
            raise ValueError("a LoRA pair needs at least one of high, high_url, low, low_url")
        return self


def _model_fields() -> dict[str, Any]:
    """``<role>`` and ``<role>_url`` for each model role a job may set (:mod:`worker.roles`)."""
    name = "{0.title}: a file name in ComfyUI's {0.kind} folder"
    url = "download {0.title} into the volume first (once: later jobs reuse it)"
    return {
        field: (kind, Field(default=None, description=text.format(role)))
        for role in roles.JOB_ROLES
        for field, kind, text in ((role.name, ModelName, name), (f"{role.name}_url", Url, url))
    }


_ModelOverrides: type[BaseModel] = create_model(
    "_ModelOverrides", __config__=ConfigDict(extra="forbid", str_strip_whitespace=True), **_model_fields()
)


class JobInput(_ModelOverrides):
    """The ``input`` of a job. The README's API reference is generated from these fields."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True, validate_default=False)

    prompt: str = Field(max_length=MAX_PROMPT_CHARS, description="what should happen in the video")
    negative_prompt: str = Field(
        default=WAN_NEGATIVE_PROMPT,
        max_length=MAX_PROMPT_CHARS,
        description="what the video should not show",
        json_schema_extra=_doc("Wan's usual negative prompt"),
    )

    image_url: Url = Field(
        default=None,
        description="the start image by URL: http(s), public addresses only, at most MAX_INPUT_IMAGE_MB",
    )
    image_base64: str | None = Field(
        default=None, description="the start image as base64, raw or a `data:image/png;base64,...` URI"
    )
    image_path: str | None = Field(
        default=None,
        min_length=1,
        max_length=4096,
        description="the start image as a file on the volume (relative to VOLUME_ROOT, or absolute inside it)",
    )
    end_image_url: Url = Field(
        default=None, description="the last frame by URL; an end image makes the job FLF2V"
    )
    end_image_base64: str | None = Field(default=None, description="the last frame as base64")
    end_image_path: str | None = Field(
        default=None, min_length=1, max_length=4096, description="the last frame as a file in the volume"
    )
    extend_video_url: Url = Field(default=None, description="an MP4 to extend, in place of a start image")
    extend_video_base64: str | None = Field(default=None, description="the MP4 to extend as base64")
    extend_video_path: str | None = Field(default=None, max_length=4096, description="the MP4 on the volume")
    extend_frames: int = Field(
        default=EXTEND_FRAMES, ge=1, le=MAX_LENGTH, description="last frames the clip starts from; 4n+1"
    )

    width: int = Field(
        default=480,
        description=f"pixels, rounded to a multiple of 16; {MIN_SIDE} to {MAX_SIDE} after rounding",
        json_schema_extra=_doc("from the start image and resolution"),
    )
    height: int = Field(
        default=832,
        description=f"pixels, rounded to a multiple of 16; {MIN_SIDE} to {MAX_SIDE} after rounding",
        json_schema_extra=_doc("from the start image and resolution"),
    )
    resolution: Resolution = Field(
        default="480p",
        description="without width and height, the video takes the start image's aspect ratio with this many "
        "pixels on its short side (rounded to multiples of 16; the start image decides for FLF2V too); with one "
        "of them, the other follows the image",
    )
    length: int = Field(
        default=81,
        description=f"frames, rounded to the nearest 4n+1; {MIN_LENGTH} to {MAX_LENGTH} after rounding; beyond "
        f"{CONTEXT_WINDOW} frames the video is sampled in overlapping {CONTEXT_WINDOW}-frame context windows",
    )
    fps: float = Field(default=16.0, ge=1.0, le=60.0, allow_inf_nan=False, description="frames per second")
    steps: int = Field(
        default=LIGHTNING_STEPS,
        ge=2,
        le=100,
        description="sampling steps, split between the experts",
        json_schema_extra=_doc(f"{LIGHTNING_STEPS} with Lightning, {PLAIN_STEPS} without"),
    )
    high_noise_steps: int = Field(
        default=LIGHTNING_STEPS // 2,
        ge=1,
        le=99,
        description="steps of the high-noise expert before the low-noise one takes over; less than steps",
        json_schema_extra=_doc("steps // 2"),
    )
    cfg: float = Field(
        default=LIGHTNING_CFG,
        ge=0.0,
        le=30.0,
        allow_inf_nan=False,
        description="classifier-free guidance",
        json_schema_extra=_doc(f"{LIGHTNING_CFG} with Lightning, {PLAIN_CFG} without"),
    )
    shift: float = Field(
        default=5.0,
        ge=0.0,
        le=100.0,
        allow_inf_nan=False,
        description="sampling shift of both experts (ModelSamplingSD3)",
    )
    seed: int = Field(
        default=-1,
        ge=-1,
        le=MAX_SEED,
        description="-1 or absent means random; the result says which was used",
        json_schema_extra=_doc("random"),
    )
    context_overlap: int = Field(
        default=48, ge=0, le=CONTEXT_WINDOW - 1, description="frames shared by neighbouring context windows"
    )
    context_freenoise: bool = Field(
        default=True,
        description="FreeNoise: the windows' noise is shuffled from one shared noise so that neighbouring "
        "windows agree, which hides the seams (ComfyUI's own default)",
    )
    context_retain_first_frame: bool = Field(
        default=False,
        description="keep the start image in every context window: for long I2V videos whose subject drifts; "
        "it pulls every window back toward the first frame, holding motion back",
    )
    lightning: bool = Field(default=True, description="the lightx2v 4-step LoRAs on both experts")
    lora_pairs: list[LoraPair] = Field(
        default_factory=list, max_length=MAX_LORA_PAIRS, description="LoRAs on the experts, see below"
    )

    interpolate: int = Field(
        default=1,
        ge=1,
        le=MAX_INTERPOLATION,
        description="frame interpolation: each gap between two generated frames gets this many times the "
        "frames, so n frames become (n-1)*interpolate+1 and the fps is multiplied too (2 turns 16 fps into 32); "
        f"1 is off; the delivered video may have at most {MAX_OUTPUT_FRAMES} frames at most {MAX_OUTPUT_FPS:g} fps",
    )
    crf: int = Field(
        default=DEFAULT_CRF,
        ge=0,
        le=51,
        description="H.264 quality (constant rate factor): lower is sharper and larger; 19 keeps the fine "
        "texture and smooth gradients of generated video free of visible blocking, for a file somewhat larger "
        "than at x264's own default of 23",
    )
    return_last_frame: bool = Field(default=False, description="also return the video's last frame as a PNG")
    output: OutputMode = Field(
        default="auto", description="base64, url (the bucket), or auto (url when a bucket is configured)"
    )

    adjustments: list[Adjustment] = Field(default_factory=list, exclude=True)

    @field_validator("prompt", "image_base64", "end_image_base64", "extend_video_base64")
    @classmethod
    def _not_blank(cls, value: str | None) -> str | None:
        if value is not None and not value.strip():
            raise ValueError("must not be empty")
        return value

    @field_validator("image_path", "end_image_path", "extend_video_path")
    @classmethod
    def _no_nul(cls, value: str | None) -> str | None:
        if value is not None and "\x00" in value:
            raise ValueError("must not contain NUL bytes")
        return value

    @model_validator(mode="before")
    @classmethod
    def _must_be_object(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            raise field_problem("input", "the job input must be a JSON object")
        if "adjustments" in data:
            raise field_problem("adjustments", "reported by the worker, not accepted as input")
        return {k: v for k, v in data.items() if not (k in _RESOLVED and v is None)}

    @model_validator(mode="after")
    def _resolve(self) -> JobInput:
        self._check_image_sources()
        self._round_sizes()
        given = self.model_fields_set
        if "steps" not in given:
            self.steps = LIGHTNING_STEPS if self.lightning else PLAIN_STEPS
        if "cfg" not in given:
            self.cfg = LIGHTNING_CFG if self.lightning else PLAIN_CFG
        if "high_noise_steps" not in given:
            self.high_noise_steps = max(1, self.steps // 2)
        elif self.high_noise_steps >= self.steps:
            raise field_problem(
                "high_noise_steps", f"must be less than steps ({self.steps}), got {self.high_noise_steps}"
            )
        if self.seed == -1:
            self.seed = secrets.randbelow(RANDOM_SEED_LIMIT)
        self._check_interpolation()
        self._check_extension()
        return self

    def _check_extension(self) -> None:
        if self.extend_frames != EXTEND_FRAMES and not self.extends:
            raise field_problem("extend_frames", f"needs a video to extend ({', '.join(EXTEND_SOURCES)})")
        if self.extends and self.extend_frames % 4 != 1:
            raise field_problem("extend_frames", f"must be 4n+1 (1, 5, 9 ...), got {self.extend_frames}")
        if self.extends and self.length <= self.extend_frames:
            raise field_problem("length", f"counts the extend_frames too: more than {self.extend_frames}")
        if self.extends and self.interpolates:
            raise field_problem("interpolate", "cannot be combined with extending a video; leave it at 1")

    def _check_interpolation(self) -> None:
        if self.output_length > MAX_OUTPUT_FRAMES:
            raise field_problem(
                "interpolate",
                f"{self.length} frames x{self.interpolate} would deliver {self.output_length} frames, more "
                f"than {MAX_OUTPUT_FRAMES}; lower interpolate or length",
            )
        if self.output_fps > MAX_OUTPUT_FPS:
            raise field_problem(
                "interpolate",
                f"{self.fps:g} fps x{self.interpolate} would be {self.output_fps:g} fps, more than "
                f"{MAX_OUTPUT_FPS:g}; lower interpolate or fps",
            )

    def _check_image_sources(self) -> None:
        starts = [n for n in IMAGE_SOURCES if getattr(self, n) is not None]
        videos = [n for n in EXTEND_SOURCES if getattr(self, n) is not None]
        if videos and len(videos + starts) > 1:
            raise field_problem(videos[0], f"give one video and no start image: {', '.join(videos + starts)}")
        if not videos and len(starts) != 1:
            given = f"got {', '.join(starts)}" if starts else "got none"
            raise field_problem(
                "image_url", f"exactly one of {', '.join(IMAGE_SOURCES)} is required ({given})"
            )
        if len(ends := [n for n in END_SOURCES if getattr(self, n)]) > 1:
            message = f"at most one of {', '.join(END_SOURCES)} may be given (got {', '.join(ends)})"
            raise field_problem("end_image_url", message)

    def _round_sizes(self) -> None:
        side = (MIN_SIDE, MAX_SIDE, "pixels", "rounded to a multiple of 16")
        frames = (MIN_LENGTH, MAX_LENGTH, "frames", "rounded to the nearest 4n+1")
        for name, (lo, hi, unit, reason) in {"width": side, "height": side, "length": frames}.items():
            requested = getattr(self, name)
            used = round_to_4n1(requested) if name == "length" else round_to_multiple(requested, 16)
            if not lo <= used <= hi:
                raise field_problem(name, f"must be between {lo} and {hi} {unit}, got {requested}")
            if used != requested:
                setattr(self, name, used)
                self.adjustments.append(Adjustment(field=name, requested=requested, used=used, reason=reason))

    @property
    def mode(self) -> Literal["i2v", "flf2v"]:
        """``flf2v`` when an end image is given, else ``i2v``."""
        return "flf2v" if any(getattr(self, n) for n in END_SOURCES) else "i2v"

    @property
    def extends(self) -> bool:
        return any(getattr(self, n) is not None for n in EXTEND_SOURCES)

    @property
    def interpolates(self) -> bool:
        return self.interpolate > 1

    @property
    def output_length(self) -> int:
        """Frames of the delivered video: (length - 1) * interpolate + 1."""
        return (self.length - 1) * self.interpolate + 1

    @property
    def output_fps(self) -> float:
        return self.fps * self.interpolate

    @property
    def uses_context_windows(self) -> bool:
        return self.length > CONTEXT_WINDOW

    def report(self) -> dict[str, Any]:
        """What the result says the job used (:data:`REPORTED`), adjustments included."""
        return {name: getattr(self, name) for name in REPORTED} | {
            "adjustments": [a.model_dump() for a in self.adjustments]
        }

    def model_name(self, role: str) -> str | None:
        """The file the job names for a model role (:mod:`worker.roles`), if any."""
        return getattr(self, role)  # type: ignore[no-any-return]

    def model_url(self, role: str) -> str | None:
        return getattr(self, f"{role}_url")  # type: ignore[no-any-return]


def check_upload_name(value: str) -> str:
    if value.startswith(".") or re.search(r"[/\\\x00-\x1f\x7f]", value) or len(value.encode()) > 200:
        raise ValueError(
            "must be a file name: no folders or control characters, no leading '.', 200 bytes at most"
        )
    return value


def check_graph(graph: dict[str, Any]) -> dict[str, Any]:
    """A ComfyUI API-format graph within bounds, each node an object with ``class_type`` and ``inputs``."""
    if not 0 < len(graph) <= MAX_WORKFLOW_NODES:
        raise ValueError(f"must have 1 to {MAX_WORKFLOW_NODES} nodes, got {len(graph)}")
    if (size := len(json.dumps(graph))) > MAX_WORKFLOW_BYTES:
        raise ValueError(f"is {size:,} bytes as JSON; at most {MAX_WORKFLOW_BYTES:,} are accepted")
    for key, node in graph.items():
        if not (
            isinstance(node, dict)
            and isinstance(node.get("class_type"), str)
            and isinstance(node.get("inputs"), dict)
        ):
            raise ValueError(
                f"node {key!r} must be an object with class_type (a string) and inputs (an object)"
            )
    return graph


class WorkflowFile(BaseModel, extra="forbid"):
    name: Annotated[str, AfterValidator(check_upload_name)] = Field(
        description="the name the graph's LoadImage (LoadVideo) node gives"
    )
    image: str = Field(
        description="an image (PNG, JPEG, WebP) or a video for LoadVideo (MP4, WebM): base64, a data URI, or an "
        "http(s) URL as image_url; at most MAX_INPUT_IMAGE_MB"
    )


class WorkflowModel(BaseModel, extra="forbid", str_strip_whitespace=True):
    url: Annotated[str, AfterValidator(check_url_shape)] = Field(description="fetched as the `*_url` fields")
    folder: Kind = Field(description="ComfyUI's model folder it goes into")
    name: ModelName = Field(default=None, description="its file name (default: from the URL)")


class WorkflowInput(BaseModel, extra="forbid"):
    """The ``input`` of a workflow job: the user's own ComfyUI graph, run in place of the built-in ones."""

    workflow: Annotated[dict[str, Any], AfterValidator(check_graph)] = Field(
        description=f"a ComfyUI API-format graph, `{{node_id: {{class_type, inputs}}}}`; at most "
        f"{MAX_WORKFLOW_NODES} nodes and {MAX_WORKFLOW_BYTES // 2**20} MB as JSON"
    )
    images: list[WorkflowFile] = Field(
        [], max_length=MAX_WORKFLOW_FILES, description="uploaded to ComfyUI first"
    )
    models: list[WorkflowModel] = Field([], max_length=MAX_WORKFLOW_FILES, description="downloaded first")
    output: OutputMode = JobInput.model_fields["output"]  # type: ignore[assignment]


REPORTED = (
    "mode",
    "seed",
    "width",
    "height",
    "length",
    "fps",
    "interpolate",
    "output_length",
    "output_fps",
    "steps",
    "high_noise_steps",
    "cfg",
    "crf",
    "lightning",
)
"""The values a job's result reports as used: the fields (rounded, defaults filled in) and the derived ones."""

_RESOLVED = ("steps", "high_noise_steps", "cfg", "seed")
"""Fields whose default depends on others (filled in by ``_resolve``): an explicit null means the default."""


MODEL_FIELD_NAMES: tuple[str, ...] = tuple(_ModelOverrides.model_fields)
FIELD_NAMES: tuple[str, ...] = (
    *(n for n in JobInput.model_fields if n not in ("adjustments", "output", *MODEL_FIELD_NAMES)),
    *MODEL_FIELD_NAMES,
    "output",
)
"""Every input field, in the order the README and error messages list them."""
LORA_FIELD_NAMES: tuple[str, ...] = tuple(LoraPair.model_fields)
NESTED_FIELDS = {"lora_pairs": LORA_FIELD_NAMES, "images": tuple(WorkflowFile.model_fields)}
NESTED_FIELDS |= {
    "models": tuple(WorkflowModel.model_fields),
    "WorkflowInput": tuple(WorkflowInput.model_fields),
}


def describe_errors(exc: ValidationError) -> list[dict[str, str]]:
    """One ``{"field", "message"}`` per problem, worded for the person who sent the job."""
    problems: list[dict[str, str]] = []
    for err in exc.errors(include_url=False, include_input=False):
        loc = tuple(err.get("loc", ()))
        field = str(
            (err.get("ctx") or {}).get("field")
            or "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in loc).removeprefix(".")
        )
        kind = err.get("type", "")
        message = str(err.get("msg", "is invalid"))
        if kind == "extra_forbidden":
            allowed = NESTED_FIELDS.get(str(loc[0]) if len(loc) > 1 else exc.title, FIELD_NAMES)
            name = str(loc[-1]) if loc else field
            message = f"unknown field {name!r}; allowed fields are: {', '.join(allowed)}"
        else:
            field = field or "input"
            message = "is required" if kind == "missing" else message.removeprefix("Value error, ")
        problems.append({"field": field, "message": message})
    return problems


def parse_job_input(data: Any, *, allow_pickle_models: bool = False) -> JobInput:
    """Validate a job's ``input``; raises :class:`pydantic.ValidationError` (see :func:`describe_errors`)."""
    return JobInput.model_validate(data, context={"allow_pickle_models": allow_pickle_models})


def input_json_schema(workflow: bool = False) -> dict[str, Any]:
    """The JSON schema of a job's ``input`` (``python -m worker schema [--workflow]``)."""
    schema = (WorkflowInput if workflow else JobInput).model_json_schema(mode="validation")
    schema.get("properties", {}).pop("adjustments", None)
    schema["title"] = "wan-worker workflow job input (v1)" if workflow else "wan-worker job input (v1)"
    return schema
