"""Python client for the ocrsite OCR service: `Client` (blocking) and `AsyncClient` (asyncio)."""

from ._common import EARLY_EXIT_REASON, Download
from .aio import AsyncClient, AsyncTaskHandle
from .errors import (
    APIError,
    AuthenticationError,
    BadRequest,
    Conflict,
    Gone,
    NotFound,
    OCRClientError,
    PayloadTooLarge,
    RateLimited,
    ServiceUnavailable,
    StreamError,
    UnsupportedMediaType,
    WaitTimeout,
)
from .sync import Client, TaskHandle

__all__ = [
    "EARLY_EXIT_REASON",
    "APIError",
    "AsyncClient",
    "AsyncTaskHandle",
    "AuthenticationError",
    "BadRequest",
    "Client",
    "Conflict",
    "Download",
    "Gone",
    "NotFound",
    "OCRClientError",
    "PayloadTooLarge",
    "RateLimited",
    "ServiceUnavailable",
    "StreamError",
    "TaskHandle",
    "UnsupportedMediaType",
    "WaitTimeout",
]
__version__ = "0.1.0"
