"""Failures of the RAG logic, each carrying the wire error code (edge_common.wire.ErrorCode)
the NATS adapter answers with: the transport maps them in one place (server.py)."""

from typing import ClassVar


class RagError(Exception):
    """Base of every error edge_rag raises on purpose."""

    code: ClassVar[str] = "generation_failed"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidInput(RagError):
    """The caller's input cannot be used: an empty text, an unknown collection, a bad path."""

    code = "invalid_request"


class NotFound(RagError):
    """No such collection, or no such document in it."""

    code = "not_found"


class InputTooLong(RagError):
    """A text is longer than the embedder's max_tokens and truncation was refused."""

    code = "context_length_exceeded"


class UnsupportedDocument(InvalidInput):
    """A file type no loader reads, or a file with no text in it."""


class BackendError(RagError):
    """The embedding runtime is missing or failed (load, inference)."""

    code = "unavailable"


class StoreError(RagError):
    """The vector store refused or failed (a collection made by another embedder, I/O)."""

    code = "unavailable"
