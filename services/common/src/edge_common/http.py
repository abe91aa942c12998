"""Start a service process: settings, logging, then its Litestar app under uvicorn."""

import sys
from collections.abc import Callable
from typing import TypeVar

import uvicorn
from litestar import Litestar

from edge_common.logs import configure_logging
from edge_common.settings import ServiceSettings, SettingsError, load_settings

S = TypeVar("S", bound=ServiceSettings)


def main(service: str, settings_cls: type[S], create_app: Callable[[S], Litestar]) -> None:
    try:
        settings = load_settings(settings_cls, service)
    except SettingsError as exc:
        sys.exit(f"edge-{service}: {exc}")
    configure_logging(service, settings.log_level)
    # log_config=None keeps uvicorn on the root logger that configure_logging set up
    uvicorn.run(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=settings.shutdown_grace_s,  # type: ignore[arg-type]
        lifespan="on",
    )
