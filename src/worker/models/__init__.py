"""Model files on the network volume: the default manifest, the volume layout, verified resumable downloads.

The handler calls :func:`ensure_job_models` with one :class:`ModelRef` per model field of a job, and one per
on-demand manifest file its graph loads (:func:`on_demand_entry`); start-up runs ``python -m worker models
ensure`` (see :mod:`worker.models.cli`).
"""

from __future__ import annotations

from .ensure import ModelRef, ensure_job_models
from .manifest import ManifestEntry, default_names, load_manifest, on_demand_entry
from .volume import FOLDER_KINDS

__all__ = [
    "FOLDER_KINDS",
    "ManifestEntry",
    "ModelRef",
    "default_names",
    "ensure_job_models",
    "load_manifest",
    "on_demand_entry",
]
