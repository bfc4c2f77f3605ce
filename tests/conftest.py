"""Fixtures shared by the handler-level tests: one emulator per module, settings pointed at it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.emulator import Emulator
from tests.support.settings import settings_for
from worker.config import Settings


@pytest.fixture(scope="module")
def emulator() -> Iterator[Emulator]:
    """A ComfyUI emulator with the default models; modules that need others define their own."""
    with Emulator() as emu:
        yield emu


@pytest.fixture
def settings(emulator: Emulator, tmp_path: Path) -> Settings:
    """Worker settings for the emulator, its faults and delays reset, its folders cleaned by the worker."""
    emulator.set_faults()
    emulator.configure(step_delay=0.0)
    return settings_for(
        emulator.url, tmp_path, COMFY_INPUT_DIR=emulator.input_dir, COMFY_OUTPUT_DIR=emulator.output_dir
    )
