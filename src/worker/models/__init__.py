"""Model files, in one place: roles, file names, the manifest, the volume, fetching, a job's models, the CLI.
Importing the package (as the job contract does) imports neither huggingface_hub, requests nor the settings."""

from __future__ import annotations

from .manifest import ManifestEntry, default_names, load_manifest
from .volume import FOLDER_KINDS

__all__ = ["FOLDER_KINDS", "ManifestEntry", "default_names", "load_manifest"]
