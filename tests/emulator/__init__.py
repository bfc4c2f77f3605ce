"""An emulated ComfyUI (v0.33.0 protocol) for tests: HTTP + WebSocket, graph validation, caching, real MP4s.

``Emulator`` runs it on a background thread, ``EmulatorProcess`` as ``python -m tests.emulator``.
See ``tests/emulator/README.md``.
"""

import logging

from .media import probe
from .process import EmulatorProcess
from .schema import DEFAULT_MODELS, MODEL_FOLDERS
from .server import FAULT_TYPES, Emulator, EmulatorCore, pick_free_port

__all__ = [
    "DEFAULT_MODELS",
    "FAULT_TYPES",
    "MODEL_FOLDERS",
    "Emulator",
    "EmulatorCore",
    "EmulatorProcess",
    "pick_free_port",
    "probe",
]

logging.getLogger("comfy_emulator").addHandler(logging.NullHandler())
