"""Typed pipeline errors; the API maps each to an HTTP status or a job error once.

PipelineError                 anything the pipeline raises on purpose
├── InvalidInputError         the input is not a processable video (job error type
│                             ``invalid_input``); ``reason`` is a short code
├── InvalidOptionsError       the requested options are impossible (bad factor, fps)
├── PipelineCanceled          the caller's cancellation token fired
└── ProcessingError           an operator or the encoder failed on a valid input
"""

from __future__ import annotations

from vocabulary import JobErrorType

__all__ = [
    "InvalidInputError",
    "InvalidOptionsError",
    "PipelineCanceled",
    "PipelineError",
    "ProcessingError",
]


class PipelineError(Exception):
    """Base class of every error the pipeline raises deliberately."""

    type: str = JobErrorType.PROCESSING_ERROR


class InvalidInputError(PipelineError):
    """The input cannot be processed: not a video, truncated, no frames, no video stream."""

    type = JobErrorType.INVALID_INPUT

    def __init__(self, message: str, *, reason: str) -> None:
        super().__init__(message)
        self.reason = reason

    def __reduce__(self) -> tuple[object, ...]:
        # Ray pickles exceptions across processes; keep the keyword-only ``reason``.
        return (_rebuild_invalid_input, (str(self), self.reason))


def _rebuild_invalid_input(message: str, reason: str) -> InvalidInputError:
    return InvalidInputError(message, reason=reason)


class InvalidOptionsError(PipelineError, ValueError):
    """The requested options cannot be honoured (e.g. upscale factor 5)."""

    type = JobErrorType.INVALID_OPTIONS


class PipelineCanceled(PipelineError):
    """Processing stopped because the job was canceled."""

    type = JobErrorType.CANCELED


class ProcessingError(PipelineError):
    """An operator, decoder or encoder failed on an input that probed as valid."""

    type = JobErrorType.PROCESSING_ERROR
