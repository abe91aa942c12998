"""Settings from EDGE_* env vars and a TOML file."""

from pathlib import Path

import msgspec
import pytest
from edge_common.settings import SettingsError, load_settings


class Inner(msgspec.Struct, frozen=True):
    id: str
    size: int = 1


class Demo(msgspec.Struct, frozen=True, kw_only=True):
    port: int = 8000
    ratio: float = 0.5
    nats_url: str = "nats://127.0.0.1:4222"
    debug: bool = False
    items: list[Inner] = msgspec.field(default_factory=list)


def test_defaults_without_env() -> None:
    """With nothing set, every field keeps its default."""
    assert load_settings(Demo, "demo", env={}) == Demo()


def test_service_key_beats_shared_key() -> None:
    """EDGE_<SERVICE>_<FIELD> wins over the shared EDGE_<FIELD>."""
    env = {"EDGE_NATS_URL": "nats://a:1", "EDGE_DEMO_NATS_URL": "nats://b:2", "EDGE_PORT": "9"}
    got = load_settings(Demo, "demo", env=env)
    assert (got.nats_url, got.port) == ("nats://b:2", 9)


def test_scalars_parse_from_text_and_lists_from_json() -> None:
    """Numbers and booleans come from their text; structured fields from JSON."""
    env = {
        "EDGE_DEMO_RATIO": "0.25",
        "EDGE_DEMO_DEBUG": "true",
        "EDGE_DEMO_ITEMS": '[{"id": "a"}, {"id": "b", "size": 3}]',
    }
    got = load_settings(Demo, "demo", env=env)
    assert got.ratio == 0.25
    assert got.debug is True
    assert got.items == [Inner("a"), Inner("b", 3)]


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("EDGE_DEMO_PORT", "eighty"),
        ("EDGE_DEMO_ITEMS", "not json"),
        ("EDGE_DEMO_ITEMS", '[{"size": 2}]'),
    ],
)
def test_bad_value_names_the_key(key: str, value: str) -> None:
    """A bad value fails with the environment variable's name in the message."""
    with pytest.raises(SettingsError, match=key):
        load_settings(Demo, "demo", env={key: value})


def test_toml_file_then_env(tmp_path: Path) -> None:
    """EDGE_CONFIG's service table applies, shared keys too, and env vars override it."""
    config = tmp_path / "edge.toml"
    config.write_text('nats_url = "nats://shared:1"\n[demo]\nport = 7000\nratio = 0.1\n')
    env = {"EDGE_CONFIG": str(config), "EDGE_DEMO_RATIO": "0.9"}
    got = load_settings(Demo, "demo", env=env)
    assert (got.nats_url, got.port, got.ratio) == ("nats://shared:1", 7000, 0.9)


def test_unreadable_config_file_is_named(tmp_path: Path) -> None:
    """A missing EDGE_CONFIG file stops startup naming EDGE_CONFIG."""
    with pytest.raises(SettingsError, match="EDGE_CONFIG"):
        load_settings(Demo, "demo", env={"EDGE_CONFIG": str(tmp_path / "absent.toml")})


def test_secret_from_the_file_its_file_variable_names(tmp_path: Path) -> None:
    """EDGE_<KEY>_FILE names a file holding the value (its one newline dropped); the
    variable itself still wins, and an unreadable file names its key."""
    secret = tmp_path / "nats_url"
    secret.write_text("nats://from-file:4222\n")
    env = {"EDGE_DEMO_NATS_URL_FILE": str(secret)}
    assert load_settings(Demo, "demo", env=env).nats_url == "nats://from-file:4222"
    env["EDGE_DEMO_NATS_URL"] = "nats://from-env:4222"
    assert load_settings(Demo, "demo", env=env).nats_url == "nats://from-env:4222"
    with pytest.raises(SettingsError, match="EDGE_DEMO_PORT_FILE"):
        load_settings(Demo, "demo", env={"EDGE_DEMO_PORT_FILE": str(tmp_path / "missing")})
