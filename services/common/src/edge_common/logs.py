"""structlog JSON logging, set up the same way in every service.

One JSON object per line on stderr, also for stdlib loggers (uvicorn, nats). `request_id`
is bound through contextvars, so every event logged while serving a request carries it.
Our own events skip the stdlib logging machinery (a LogRecord, the caller's frame, a
formatter: three quarters of an event's cost, and the router logs one per request); stdlib
loggers' records are formatted into the same shape.
"""

import json
import logging
import sys

import msgspec
import structlog
from structlog.typing import EventDict, WrappedLogger

_encode = msgspec.json.Encoder(enc_hook=repr).encode
"""What the json module cannot write is written as its repr (as structlog's renderer does)."""


class _Named(structlog.BytesLogger):
    """Lines to stderr from the logger of one module (its `logger` key)."""

    def __init__(self, name: str = "") -> None:
        super().__init__(sys.stderr.buffer)
        self.name = name


def _named(logger: _Named, __: str, event: EventDict) -> EventDict:
    event["logger"] = logger.name
    return event


def _render(_: WrappedLogger, __: str, event: EventDict) -> bytes:
    try:
        return _encode(event)
    except UnicodeEncodeError:  # a lone surrogate (a file name's undecodable byte): escaped
        return json.dumps(event, default=repr).encode()


def configure_logging(service: str, level: str = "info") -> None:
    def add_service(_: WrappedLogger, __: str, event: EventDict) -> EventDict:
        event.setdefault("service", service)
        return event

    stamp = structlog.processors.TimeStamper(fmt="iso", utc=True)
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            _named,
            add_service,
            stamp,
            structlog.processors.format_exc_info,
            _render,
        ],
        logger_factory=_Named,
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level.upper())),
        cache_logger_on_first_use=True,
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[
                structlog.contextvars.merge_contextvars,
                structlog.stdlib.add_log_level,
                structlog.stdlib.add_logger_name,
                add_service,
                stamp,
            ],
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                structlog.processors.format_exc_info,
                structlog.processors.JSONRenderer(),
            ],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True
