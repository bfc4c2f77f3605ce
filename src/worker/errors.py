"""Every error the worker can report, typed, each with a stable ``code`` and optional ``details``; they become
the ``{"error", "error_code", "details"}`` shape only in the handler (:meth:`WorkerError.to_result`). Each
subclasses the standard exception it resembles so that callers may catch either. Messages are written for the
person who sent the job: what was wrong, which field, what is allowed."""

from __future__ import annotations

from typing import Any


class WorkerError(Exception):
    """Base of every error the worker reports to a client."""

    code = "internal_error"

    def __init_subclass__(cls, code: str = "", **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls.code = code or cls.code

    def __init__(self, message: str, *, details: list[Any] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.details: list[Any] = list(details or [])

    def to_result(self) -> dict[str, Any]:
        """The job result for this error: the message begins with its code (the local API shows only it)."""
        return {"error": f"{self.code}: {self.message}", "error_code": self.code, "details": self.details}


class InvalidInput(WorkerError, ValueError, code="invalid_input"):
    """The job input breaks the contract: a field is missing, of the wrong type or out of bounds."""


class UrlNotAllowed(InvalidInput, code="url_not_allowed"):
    """A URL was refused by policy: scheme, address, host allow-list, file name or extension."""


class ImageFetchFailed(WorkerError, ConnectionError, code="image_fetch_failed"):
    """An input image could not be fetched from its URL."""


class InvalidImage(InvalidInput, code="invalid_image"):
    """Input bytes are not an accepted image, or exceed the size limits."""


class ModelMissing(WorkerError, FileNotFoundError, code="model_missing"):
    """A model file named by the job is not on the volume (nor known to ComfyUI)."""


class ModelDownloadFailed(WorkerError, OSError, code="model_download_failed"):
    """A model file could not be downloaded or did not verify."""


class ComfyUnavailable(WorkerError, ConnectionError, code="comfyui_unavailable"):
    """ComfyUI did not answer: not started in time, crashed, or unreachable."""


class ComfyValidationError(WorkerError, ValueError, code="comfyui_validation"):
    """ComfyUI refused the graph (``POST /prompt`` answered 400)."""


class ComfyExecutionError(WorkerError, RuntimeError, code="comfyui_execution"):
    """ComfyUI accepted the graph but a node failed while running."""


class JobTimeout(WorkerError, TimeoutError, code="timeout"):
    """The job passed a deadline: no message from ComfyUI for too long, or the whole job took too long."""


class JobCancelled(WorkerError, code="cancelled"):
    """The job was cancelled; ComfyUI was interrupted."""


class NoOutput(WorkerError, LookupError, code="no_output"):
    """ComfyUI finished but produced no video, or the video could not be fetched."""


class OutputTooLarge(WorkerError, code="output_too_large"):
    """The video is larger than the inline limit and no bucket is configured."""


class UploadFailed(WorkerError, ConnectionError, code="upload_failed"):
    """The video could not be uploaded to the configured bucket."""


class InternalError(WorkerError, RuntimeError, code="internal_error"):
    """A fault of the worker itself; the message never carries a traceback."""
