"""Every error the worker can report, typed, each with a stable code.

Errors subclass the standard exception they resemble so that callers may catch either; they carry a stable
``code`` and optional ``details`` and become the ``{"error", "error_code", "details"}`` shape only in the
handler (see :func:`to_result`). Messages are written for the person who sent the job: what was wrong, which
field, what is allowed.
"""

from __future__ import annotations

from typing import Any


class WorkerError(Exception):
    """Base of every error the worker reports to a client."""

    code = "internal_error"

    def __init__(self, message: str, *, details: list[Any] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.details: list[Any] = list(details or [])

    def to_result(self) -> dict[str, Any]:
        """The job result for this error: the message begins with its code (the local API shows only it)."""
        return {"error": f"{self.code}: {self.message}", "error_code": self.code, "details": self.details}


class InvalidInput(WorkerError, ValueError):
    """The job input breaks the contract: a field is missing, of the wrong type or out of bounds."""

    code = "invalid_input"


class UrlNotAllowed(InvalidInput):
    """A URL was refused by policy: scheme, address, host allow-list, file name or extension."""

    code = "url_not_allowed"


class ImageFetchFailed(WorkerError, ConnectionError):
    """An input image could not be fetched from its URL."""

    code = "image_fetch_failed"


class InvalidImage(InvalidInput):
    """Input bytes are not an accepted image, or exceed the size limits."""

    code = "invalid_image"


class ModelMissing(WorkerError, FileNotFoundError):
    """A model file named by the job is not on the volume (nor known to ComfyUI)."""

    code = "model_missing"


class ModelDownloadFailed(WorkerError, OSError):
    """A model file could not be downloaded or did not verify."""

    code = "model_download_failed"


class ComfyUnavailable(WorkerError, ConnectionError):
    """ComfyUI did not answer: not started in time, crashed, or unreachable."""

    code = "comfyui_unavailable"


class ComfyValidationError(WorkerError, ValueError):
    """ComfyUI refused the graph (``POST /prompt`` answered 400)."""

    code = "comfyui_validation"


class ComfyExecutionError(WorkerError, RuntimeError):
    """ComfyUI accepted the graph but a node failed while running."""

    code = "comfyui_execution"


class JobTimeout(WorkerError, TimeoutError):
    """The job passed a deadline: no message from ComfyUI for too long, or the whole job took too long."""

    code = "timeout"


class JobCancelled(WorkerError):
    """The job was cancelled; ComfyUI was interrupted."""

    code = "cancelled"


class NoOutput(WorkerError, LookupError):
    """ComfyUI finished but produced no video, or the video could not be fetched."""

    code = "no_output"


class OutputTooLarge(WorkerError):
    """The video is larger than the inline limit and no bucket is configured."""

    code = "output_too_large"


class UploadFailed(WorkerError, ConnectionError):
    """The video could not be uploaded to the configured bucket."""

    code = "upload_failed"


class InternalError(WorkerError, RuntimeError):
    """A fault of the worker itself; the message never carries a traceback."""

    code = "internal_error"
