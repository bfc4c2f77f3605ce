"""An emulated ComfyUI (v0.33.0's protocol) for speed and for faults: see ``tests/emulator/README.md``.

``Emulator`` runs it on a background thread, ``EmulatorProcess`` as ``python -m tests.emulator``.
"""

from .process import EmulatorProcess
from .schema import DEFAULT_MODELS, MODEL_FOLDERS
from .server import FAULT_TYPES, Emulator, EmulatorCore

__all__ = ["DEFAULT_MODELS", "FAULT_TYPES", "MODEL_FOLDERS", "Emulator", "EmulatorCore", "EmulatorProcess"]
