"""Typed settings from `EDGE_*` environment variables and an optional TOML file.

Each service declares one msgspec Struct of settings. A field `port` of service `router`
is read from `EDGE_ROUTER_PORT`, else from `EDGE_PORT` (shared by all services, handy for
`EDGE_NATS_URL`), each also from the file `..._FILE` names (EDGE_ROUTER_PORT_FILE: a secret
is a file, never a variable's value), else from the `[router]` table (or the top level) of
the TOML file named by `EDGE_CONFIG`, else it keeps its default. Scalars are parsed from
their text, lists and tables from JSON. A bad value stops startup with an error naming the key.
"""

import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

import msgspec

T = TypeVar("T", bound=msgspec.Struct)


class ServiceSettings(msgspec.Struct, frozen=True, kw_only=True):
    """The settings every service has: the bus, its HTTP server, its log level."""

    nats_url: str = "nats://127.0.0.1:4222"
    """NATS server(s) to join, comma separated."""
    nats_password: str = ""
    """This service's password on NATS (its user is the service's name, see nats.conf);
    empty = connect without credentials."""
    host: str = "127.0.0.1"
    """Address the service's HTTP server listens on."""
    port: int
    """Port the service's HTTP server listens on."""
    header_timeout_s: float = 10.0
    """A client must send a request's head (request line and headers) within this long of
    starting it, or its connection is closed: slow clients cannot hold connections."""
    body_timeout_s: float = 30.0
    """... and the request's body within this long of its head (an 8 MB body at 2 Mbit/s
    takes 32 s: raise it for slow links)."""
    log_level: str = "info"
    """Log level: debug, info, warning, error."""
    shutdown_grace_s: float = 8.0
    """On SIGTERM, what is under way (the router's client streams, the llm's generations)
    gets this long to finish; then it is ended. Keep it below the supervisor's stop
    timeout (Docker's is 10 s)."""


class WorkerSettings(ServiceSettings, frozen=True, kw_only=True):
    """What every NATS worker on the NPU has (see edge_common.worker)."""

    board: str = ""
    """Name of this board's NPU lease (shared by llm and vision); empty = hostname."""
    npu_slots: int = 1
    """Jobs the NPU may run at once (2 when vision is pinned to one core, LLM to the other)."""
    lease_ttl_s: float = 5.0
    """A holder that stops renewing loses the NPU lease after this long (same on a board)."""
    stall_s: float = 30.0
    """A job that shows no progress for this long is aborted (Failed: unavailable)."""
    abort_grace_s: float = 5.0
    """A backend that does not return this long after a stall abort is wedged: the worker
    exits (code 70, `<service>.watchdog_exit`) for its supervisor to restart it."""
    board_memory_mb: int = 0
    """Memory the board's workers may hold between them (EDGE_BOARD_MEMORY_MB, the board's:
    set it for every worker); 0 = MemAvailable less `memory_reserve_mb`."""
    memory_budget_mb: int = 0
    """Cap on what this worker's loaded models take; 0 = only the board's budget."""
    memory_reserve_mb: int = 512
    """Memory left to everything else when the budget is taken from MemAvailable."""


class SettingsError(ValueError):
    """A setting could not be read; the message names the key."""


def _is_scalar(field: msgspec.inspect.Type) -> bool:
    scalar = (
        msgspec.inspect.StrType,
        msgspec.inspect.IntType,
        msgspec.inspect.FloatType,
        msgspec.inspect.BoolType,
        msgspec.inspect.LiteralType,
        msgspec.inspect.NoneType,
    )
    if isinstance(field, msgspec.inspect.UnionType):
        return all(_is_scalar(t) for t in field.types)
    return isinstance(field, scalar)


def _read_file(key: str, path: str) -> str:
    try:
        return Path(path).read_text().removesuffix("\n")
    except OSError as exc:
        raise SettingsError(f"{key}: cannot read {path}: {exc}") from exc


def load_settings(cls: type[T], service: str, env: Mapping[str, str] | None = None) -> T:
    env = os.environ if env is None else env
    raw: dict[str, Any] = {}
    if path := env.get("EDGE_CONFIG"):
        try:
            doc = tomllib.loads(Path(path).read_text())
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise SettingsError(f"EDGE_CONFIG: cannot read {path}: {exc}") from exc
        raw |= {k: v for k, v in doc.items() if not isinstance(v, dict)}
        raw |= doc.get(service, {})

    info = msgspec.inspect.type_info(cls)
    assert isinstance(info, msgspec.inspect.StructType)
    for field in info.fields:
        for key in (f"EDGE_{service.upper()}_{field.name.upper()}", f"EDGE_{field.name.upper()}"):
            if key in env:
                text = env[key]
            elif f"{key}_FILE" in env:  # a secret handed over as a file (compose secrets)
                text = _read_file(f"{key}_FILE", env[f"{key}_FILE"])
            else:
                continue
            if _is_scalar(field.type):
                raw[field.name] = text
            else:
                try:
                    raw[field.name] = msgspec.json.decode(text)
                except msgspec.DecodeError as exc:
                    raise SettingsError(f"{key}: not valid JSON: {exc}") from exc
            break

    try:
        return msgspec.convert(raw, cls, strict=False)
    except msgspec.ValidationError as exc:
        # msgspec names the path as `$.field...`: turn it into the env var a user would set
        message = str(exc)
        if " - at `$." in message:
            message, _, path = message.partition(" - at `$.")
            name = path.rstrip("`").split(".")[0].split("[")[0]
            raise SettingsError(f"EDGE_{service.upper()}_{name.upper()}: {message}") from exc
        raise SettingsError(f"{service} settings: {message}") from exc
