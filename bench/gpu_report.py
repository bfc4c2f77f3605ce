"""What the GPU benchmark reports: the FLOP floor with its arithmetic, each job's stage times read from ComfyUI's
WebSocket messages, the output's deviation from the reference run, and the table."""

from __future__ import annotations

import base64
import io
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import av
import numpy as np
from gpu_observe import Message

from worker import graph

SAMPLERS = {expert: f"sampler_{expert}" for expert in graph.EXPERTS}
"""The two KSamplerAdvanced nodes of the worker's graphs (high expert first)."""
DECODE_NODE = "decode"
"""The graphs' VAEDecode node."""


# ------------------------------------------------------------------------------------------- FLOP floor
@dataclass(frozen=True)
class Expert:
    """What the FLOP count of one expert pass needs from the model config."""

    dim: int
    ffn_dim: int
    num_layers: int
    text_len: int
    patch: tuple[int, int, int]
    vae_stride: tuple[int, int, int]


@dataclass(frozen=True)
class Peak:
    """The GPU's dense peak, in TFLOP/s, in 16-bit and in fp8."""

    bf16: float
    fp8: float


def latent_grid(expert: Expert, width: int, height: int, length: int) -> tuple[int, int, int]:
    """Tokens per axis (frames, rows, columns) of a ``width`` x ``height`` video of ``length`` frames."""
    ft, fh, fw = expert.vae_stride
    pt, ph, pw = expert.patch
    return ((length - 1) // ft + 1) // pt, height // fh // ph, width // fw // pw


def pass_flop(expert: Expert, tokens: int) -> tuple[float, float]:
    """(linear layers, attention) FLOP of one expert pass over ``tokens`` tokens: per block, self-attention's q,
    k, v, o and cross-attention's q, o on the tokens (6 D^2 each), cross-attention's k, v on the text (2 T D^2),
    the FFN (2 D F), self-attention's scores and sum (2 L^2 D), cross-attention's (2 L T D); 2 FLOP a
    multiply-add. The embeddings and the head are left out (under 0.1 %)."""
    d, f, n, t = expert.dim, expert.ffn_dim, expert.num_layers, expert.text_len
    linear = 2 * n * (tokens * (6 * d * d + 2 * d * f) + 2 * t * d * d)
    attention = 2 * n * (2 * tokens * tokens * d + 2 * tokens * t * d)
    return float(linear), float(attention)


@dataclass(frozen=True)
class Floor:
    """The FLOP floor of one job's sampling, and how it was reached."""

    passes: int
    linear: float
    attention: float
    lines: list[str]

    @property
    def flop(self) -> float:
        return self.passes * (self.linear + self.attention)

    def seconds(self, peak: Peak) -> float:
        """At the 16-bit peak: the floor the ratio column divides by."""
        return self.flop / (peak.bf16 * 1e12)


def floor(expert: Expert, peak: Peak, width: int, height: int, length: int, passes: int) -> Floor:
    grid = latent_grid(expert, width, height, length)
    tokens = math.prod(grid)
    linear, attention = pass_flop(expert, tokens)
    d, f, n, t = expert.dim, expert.ffn_dim, expert.num_layers, expert.text_len
    one = linear + attention
    total = passes * one
    at16 = total / (peak.bf16 * 1e12)
    fp8_linear = passes * (linear / (peak.fp8 * 1e12) + attention / (peak.bf16 * 1e12))
    all8 = total / (peak.fp8 * 1e12)
    lines = [
        f"{width}x{height}x{length}: {grid[0]} x {grid[1]} x {grid[2]} = {tokens:,} tokens, "
        f"{n} blocks, dim {d}, ffn {f}, text {t} tokens",
        f"  linear    = 2 x {n} x ({tokens:,} x (6 x {d}^2 + 2 x {d} x {f}) + 2 x {t} x {d}^2) = {flop_text(linear)}",
        f"  attention = 2 x {n} x (2 x {tokens:,}^2 x {d} + 2 x {tokens:,} x {t} x {d}) = {flop_text(attention)}"
        f" ({attention / one:.0%} of a pass)",
        f"  {passes} passes x {flop_text(one)} = {flop_text(total)}; floor at {peak.bf16:g} TFLOP/s (16-bit) "
        f"{seconds_text(at16)}, fp8 linear layers ({peak.fp8:g}) {seconds_text(fp8_linear)}, "
        f"8-bit attention too {seconds_text(all8)}",
    ]
    return Floor(passes, linear, attention, lines)


def flop_text(value: float) -> str:
    for unit, scale in (("PFLOP", 1e15), ("TFLOP", 1e12), ("GFLOP", 1e9), ("MFLOP", 1e6)):
        if value >= scale:
            return f"{value / scale:.3g} {unit}"
    return f"{value:.3g} FLOP"


def seconds_text(value: float) -> str:
    return f"{value:.3g} s" if value >= 1e-3 else f"{value * 1e6:.3g} us"


# ------------------------------------------------------------------------------------------- stage times
@dataclass
class Stages:
    """A job's times, in seconds, from ComfyUI's messages as the worker received them.

    - ``load``: from the start of the prompt to the high expert's first step, less one step: loading and
      patching models, encoding the prompt and the image (on a configuration's first job, the load time);
    - ``step``: seconds per step of each expert: the time between its first and last step over the steps
      between (one step alone: from the sampler's start, so its own load counts in);
    - ``swap``: from the low-noise sampler's start to its first step, less one step: bringing that expert in;
    - ``nodes``: every node's time, from its ``executing`` message to the next one;
    - ``comfyui``: from the prompt's start to its end.
    """

    load: float | None = None
    step: dict[str, float | None] = field(default_factory=dict)
    swap: float | None = None
    nodes: dict[str, float] = field(default_factory=dict)
    comfyui: float | None = None


def stages(messages: Sequence[Message]) -> Stages:
    out = Stages()
    start = next((m.at for m in messages if m.type == "execution_start"), None)
    end = next((m.at for m in messages if m.type in ("execution_success", "execution_error")), None)
    if start is not None and end is not None:
        out.comfyui = end - start
    running: tuple[str, float] | None = None
    for message in messages:
        if message.type == "executing" or message.type in ("execution_success", "execution_error"):
            if running is not None:
                out.nodes[running[0]] = out.nodes.get(running[0], 0.0) + message.at - running[1]
            node = message.data.get("node") if message.type == "executing" else None
            running = (str(node), message.at) if node is not None else None
    firsts: dict[str, float] = {}
    for expert, node in SAMPLERS.items():
        began = next((m.at for m in messages if m.type == "executing" and m.data.get("node") == node), None)
        steps = [m.at for m in messages if m.type == "progress" and m.data.get("node") == node]
        if not steps or began is None:
            out.step[expert] = None
            continue
        per_step = (steps[-1] - steps[0]) / (len(steps) - 1) if len(steps) > 1 else steps[0] - began
        out.step[expert] = per_step
        firsts[expert] = steps[0] - per_step
        if expert == "low":
            out.swap = max(0.0, firsts[expert] - began)
    if start is not None and "high" in firsts:
        out.load = max(0.0, firsts["high"] - start)
    return out


# ------------------------------------------------------------------------------------------- deviation
def frames(video_b64: str) -> np.ndarray:
    """The decoded frames of a base64 MP4, as (frames, height, width, 3) uint8 RGB."""
    with av.open(io.BytesIO(base64.b64decode(video_b64))) as container:
        stream = container.streams.video[0]
        return np.stack([frame.to_ndarray(format="rgb24") for frame in container.decode(stream)])


def psnr(a: np.ndarray, b: np.ndarray) -> float | None:
    """Peak signal-to-noise ratio in dB of ``b`` against ``a``; inf when equal, None when shapes differ."""
    if a.shape != b.shape:
        return None
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return math.inf if mse == 0 else 10 * math.log10(255.0**2 / mse)


# ------------------------------------------------------------------------------------------- the table
COLUMNS = (
    ("config", "{}", 22),
    ("job", "{}", 11),
    ("video", "{}", 12),
    ("load s", "{:.2f}", 7),
    ("high s/step", "{:.3f}", 11),
    ("low s/step", "{:.3f}", 10),
    ("swap s", "{:.2f}", 7),
    ("decode s", "{:.2f}", 8),
    ("interp s", "{:.2f}", 8),
    ("total s", "{:.2f}", 8),
    ("VRAM GB", "{:.1f}", 7),
    ("x floor", "{:.3g}", 8),
    ("PSNR dB", "{:.1f}", 7),
)
"""The table's columns: heading, number format, width."""


def cell(value: Any, fmt: str) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, str):
        return value
    if isinstance(value, float) and math.isinf(value):
        return "same"
    return fmt.format(value)


def table(rows: Sequence[dict[str, Any]]) -> list[str]:
    """One line per row (a dict keyed by the column headings; a row with ``error`` shows it after its job)."""
    head = "  ".join(
        f"{name:>{width}}" if i > 2 else f"{name:<{width}}" for i, (name, _, width) in enumerate(COLUMNS)
    )
    lines = [head, "-" * len(head)]
    for row in rows:
        if row.get("error"):
            lines.append(f"{row['config']:<22}  {row['job']:<11}  error: {row['error']}")
            continue
        cells = []
        for i, (name, fmt, width) in enumerate(COLUMNS):
            text = cell(row.get(name), fmt)
            cells.append(f"{text:>{width}}" if i > 2 else f"{text:<{width}}")
        lines.append("  ".join(cells))
    return lines
