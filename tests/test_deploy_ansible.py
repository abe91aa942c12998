"""ansible/: ansible-lint (production profile) and --syntax-check clean, and a real rollout
on three inventory hosts (connection local, a prefix and API port each): the compose step
is a stand-in honouring the CLI (`up -d`, `down`, `ps` in the release directory, reading
its .env), whose /health fails for one host's new version. That host rolls back to the
previous release, the rollout stops (max_fail_percentage 0), the host before keeps the new
release, the host after was never touched.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from edge_common.stack import free_port

ROOT = Path(__file__).resolve().parent.parent
ANSIBLE = ROOT / "ansible"
BIN = Path(sys.executable).parent
pytestmark = pytest.mark.timeout(300)

FAKE_COMPOSE = r'''#!{python}
"""A compose stand-in: `up -d` serves /health on EDGE_API_PORT (from ./.env) in the
background, `down` stops it, `ps` tells. FAKE_BROKEN=<version> makes that version's health
fail (503), as a release whose router never gets healthy."""
import http.server, json, os, signal, subprocess, sys
from pathlib import Path

lines = Path(".env").read_text().splitlines()
env = dict(l.split("=", 1) for l in lines if "=" in l and not l.startswith("#"))
pid = Path(".fake-compose.pid")
command = sys.argv[1]
if command == "serve":
    ok = env["EDGE_AI_VERSION"] != os.environ.get("FAKE_BROKEN")
    class Health(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            status = "ok" if ok else "degraded"
            body = json.dumps({{"status": status, "version": env["EDGE_AI_VERSION"]}}).encode()
            self.send_response(200 if ok else 503)
            self.send_header("content-type", "application/json")
            self.end_headers()
            self.wfile.write(body)
        def log_message(self, *args): pass
    http.server.HTTPServer(("127.0.0.1", int(env["EDGE_API_PORT"])), Health).serve_forever()
elif command == "up":
    assert sys.argv[2:] == ["-d"], sys.argv
    proc = subprocess.Popen([sys.executable, __file__, "serve"], start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    pid.write_text(str(proc.pid))
elif command == "down":
    if pid.exists():
        try:
            os.kill(int(pid.read_text()), signal.SIGTERM)
        except ProcessLookupError:
            pass
        pid.unlink()
elif command == "ps":
    print("running" if pid.exists() else "stopped")
else:
    sys.exit(f"fake compose: unknown command {{command}}")
'''


def ansible(
    tool: str, *argv: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / tool), *argv],
        cwd=ANSIBLE,
        capture_output=True,
        text=True,
        timeout=240,
        env={**os.environ, "ANSIBLE_NOCOLOR": "1", **(env or {})},
    )


def test_ansible_lint_production_profile_is_clean() -> None:
    """ansible-lint --profile production passes on the playbooks and both roles."""
    result = ansible("ansible-lint", "--profile", "production", "--offline", ".")
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("playbook", ["site.yml", "rollout.yml"])
def test_playbooks_pass_syntax_check(playbook: str) -> None:
    """ansible-playbook --syntax-check accepts each playbook with the example inventory."""
    result = ansible("ansible-playbook", "--syntax-check", "-i", "inventory.example.yml", playbook)
    assert result.returncode == 0, result.stdout + result.stderr


def test_rollout_rolls_back_the_failing_host_and_stops(tmp_path: Path) -> None:
    """v2 on host1 stays, host2's failed gate brings v1 back, host3 is never touched."""
    fake = tmp_path / "fake-compose"
    fake.write_text(FAKE_COMPOSE.format(python=sys.executable))
    fake.chmod(0o755)
    hosts = {f"host{i}": {"prefix": tmp_path / f"host{i}", "port": free_port()} for i in (1, 2, 3)}
    inventory = {
        "boards": {
            "hosts": {
                name: {
                    "edge_ai_prefix": str(h["prefix"]),
                    "edge_ai_api_port": h["port"],
                    "edge_ai_compose_env": {"FAKE_BROKEN": "0.2.0" if name == "host2" else ""},
                }
                for name, h in hosts.items()
            },
            "vars": {
                "ansible_connection": "local",
                "ansible_python_interpreter": sys.executable,
                "edge_ai_compose": str(fake),
                "edge_ai_source": str(ROOT),
                "edge_ai_health_retries": 3,
                "edge_ai_health_delay": 0.2,
            },
        }
    }
    (tmp_path / "inventory.json").write_text(json.dumps(inventory))

    def rollout(version: str) -> subprocess.CompletedProcess[str]:
        argv = [
            "-i",
            str(tmp_path / "inventory.json"),
            "rollout.yml",
            "-e",
            f"edge_ai_version={version}",
        ]
        return ansible("ansible-playbook", *argv)

    def serving(name: str) -> str:
        return httpx.get(f"http://127.0.0.1:{hosts[name]['port']}/health", timeout=2).json()[
            "version"
        ]

    def current(name: str) -> str:
        return (hosts[name]["prefix"] / "current").resolve().name

    try:
        first = rollout("0.1.0")
        assert first.returncode == 0, first.stdout[-3000:]
        assert [serving(n) for n in hosts] == ["0.1.0"] * 3

        second = rollout("0.2.0")
        assert second.returncode != 0
        assert "0.2.0 failed its health gate; back on" in second.stdout
        assert (current("host1"), serving("host1")) == ("0.2.0", "0.2.0")
        assert (current("host2"), serving("host2")) == ("0.1.0", "0.1.0")
        assert (current("host3"), serving("host3")) == ("0.1.0", "0.1.0")
        assert not (hosts["host3"]["prefix"] / "releases" / "0.2.0").exists()
        assert (hosts["host1"]["prefix"] / "releases" / "0.1.0").is_dir()  # kept to roll back to
    finally:
        for h in hosts.values():
            for release in (h["prefix"] / "releases").glob("*"):
                subprocess.run([str(fake), "down"], cwd=release, check=False)
