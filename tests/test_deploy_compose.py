"""compose.yaml: valid against the compose specification, and the deployment's invariants.

The file is read as a compose engine reads it (YAML with its anchors and merge keys, then
`${VAR:-default}` interpolation with an empty environment) and validated by compose-spec's
Rust-backed schema (`compose_spec`), then checked: healthchecks, devices, ports, tags,
secrets, memory.
"""

import json
import re
from pathlib import Path
from typing import Any

import compose_spec
import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
NPU_SERVICES = {"llm", "vision"}
EIGHT_GB = 8 * 1024**3
UNITS = {"b": 1, "k": 1024, "m": 1024**2, "g": 1024**3}
VARIABLE = re.compile(r"\$\{(\w+)(?::?-([^}]*))?\}")


def interpolate(value: Any, env: dict[str, str]) -> Any:
    if isinstance(value, str):
        return VARIABLE.sub(lambda m: env.get(m[1], m[2] or ""), value)
    if isinstance(value, list):
        return [interpolate(v, env) for v in value]
    if isinstance(value, dict):
        return {k: interpolate(v, env) for k, v in value.items()}
    return value


def load(env: dict[str, str] | None = None) -> dict[str, Any]:
    return interpolate(yaml.safe_load((ROOT / "compose.yaml").read_text()), env or {})


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return load()


def bytes_of(size: str) -> int:
    number, unit = re.fullmatch(r"(\d+)([bkmg])b?", size.lower()).groups()  # type: ignore[union-attr]
    return int(number) * UNITS[unit]


def active(compose: dict[str, Any], profiles: set[str]) -> dict[str, Any]:
    services = compose["services"].items()
    return {n: s for n, s in services if not s.get("profiles") or set(s["profiles"]) & profiles}


def test_compose_validates_against_the_compose_spec(compose: dict[str, Any]) -> None:
    """compose-spec's schema accepts the file (and rejects it once a condition is broken)."""
    parsed = compose_spec.PyCompose.from_json(json.dumps(compose))
    assert parsed.to_spec().services is not None
    assert set(parsed.service_names()) >= {"nats", "router", "llm", "vision", "rag", "qdrant"}
    broken = json.loads(json.dumps(compose))
    broken["services"]["router"]["depends_on"]["nats"]["condition"] = "healthy-ish"
    with pytest.raises(ValueError, match="service_healthy"):
        compose_spec.PyCompose.from_json(json.dumps(broken))


def test_every_service_has_healthcheck_restart_limit_and_pinned_tag(
    compose: dict[str, Any],
) -> None:
    """Each service: a healthcheck, a restart policy, a memory limit, a pinned image tag."""
    for name, service in compose["services"].items():
        assert service["healthcheck"]["test"], name
        assert service["restart"] in {"unless-stopped", "always", "on-failure"}, name
        assert bytes_of(service["deploy"]["resources"]["limits"]["memory"]) > 0, name
        image, _, tag = service["image"].rpartition(":")
        assert image, name
        assert re.fullmatch(r"v?\d+\.\d+\.\d+", tag), f"{name}: {service['image']}"


def test_services_wait_for_a_healthy_bus(compose: dict[str, Any]) -> None:
    """Everything but nats and qdrant starts once nats is healthy."""
    for name, service in compose["services"].items():
        if name not in {"nats", "qdrant"}:
            assert service["depends_on"] == {"nats": {"condition": "service_healthy"}}, name


def test_only_the_router_publishes_a_port(compose: dict[str, Any]) -> None:
    """The workers and the bus are reached inside the compose network only."""
    published = {name for name, s in compose["services"].items() if s.get("ports")}
    assert published == {"router"}
    assert compose["services"]["router"]["ports"] == ["0.0.0.0:8000:8000"]


def test_only_npu_services_get_devices_and_only_rockchip_nodes(compose: dict[str, Any]) -> None:
    """llm and vision (profile npu) get the RK3576 nodes; their cpu twins and the rest none."""
    with_devices = {name for name, s in compose["services"].items() if s.get("devices")}
    assert with_devices == NPU_SERVICES
    allowed = {"/dev/dri/renderD129", "/dev/dma_heap", "/dev/rga", "/dev/mpp_service"}
    for name in NPU_SERVICES:
        service = compose["services"][name]
        assert service["profiles"] == ["npu"]
        assert {d.split(":")[0] for d in service["devices"]} <= allowed
        sysfs = [v for v in service["volumes"] if v.startswith("/sys/")]
        assert sysfs, name
        assert all(v.endswith(":ro") for v in sysfs), name
        assert not service.get("privileged"), name
        assert compose["services"][f"{name}-cpu"]["profiles"] == ["cpu"]


def test_no_inline_secrets(compose: dict[str, Any]) -> None:
    """Passwords come from secret files (NAME_FILE for the entrypoint), never as values."""
    for name, service in compose["services"].items():
        for key, value in (service.get("environment") or {}).items():
            secret_like = re.search(r"PASSWORD|SECRET|TOKEN|API_KEY", key)
            assert not secret_like or key.endswith("_FILE"), f"{name}: {key}"
            if secret_like:
                secret = Path(value).name
                assert value == f"/run/secrets/{secret}"
                assert secret in service["secrets"]
    for secret in compose["secrets"].values():
        assert set(secret) == {"file"}  # no `environment:` or inline content


def test_root_filesystems_read_only_and_privileges_dropped(compose: dict[str, Any]) -> None:
    """The stack's own services run read-only, all capabilities dropped, no new privileges."""
    for name, service in compose["services"].items():
        assert service["cap_drop"] == ["ALL"], name
        assert "no-new-privileges:true" in service["security_opt"], name
        assert service["read_only"] is (name != "qdrant"), name


def test_models_read_only_data_on_named_volumes(compose: dict[str, Any]) -> None:
    """Models are mounted read-only; JetStream and rag's store are named volumes."""
    for name, service in compose["services"].items():
        for volume in service.get("volumes", []):
            if ":/models" in volume:
                assert volume.endswith(":ro"), name
    named = {v.split(":")[0] for s in compose["services"].values() for v in s.get("volumes", [])}
    assert {"jetstream", "rag"} <= named <= named | set(compose["volumes"])
    assert {"jetstream", "rag", "qdrant"} <= set(compose["volumes"])


@pytest.mark.parametrize("profiles", [{"npu", "qdrant"}, {"cpu", "qdrant"}])
def test_memory_limits_fit_the_board(compose: dict[str, Any], profiles: set[str]) -> None:
    """The limits of everything one profile set starts add up within the board's 8 GB."""
    services = active(compose, profiles)
    assert {"nats", "router", "llm", "vision", "rag", "qdrant"} & set(services)
    total = sum(bytes_of(s["deploy"]["resources"]["limits"]["memory"]) for s in services.values())
    assert total <= EIGHT_GB, total / 1024**2


def test_versions_and_places_come_from_the_environment() -> None:
    """EDGE_AI_VERSION and the secrets directory are interpolated as Ansible's .env sets them."""
    compose = load({"EDGE_AI_VERSION": "0.2.0", "EDGE_SECRETS_DIR": "/srv/edge-ai/secrets"})
    assert compose["services"]["router"]["image"] == "localhost/edge-ai-router:0.2.0"
    secret = compose["secrets"]["nats_router_password"]["file"]
    assert secret == "/srv/edge-ai/secrets/nats_router_password"
