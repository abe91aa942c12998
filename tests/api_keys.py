"""API keys for end-to-end tests, made the way an operator makes them (`edge-keys create`)."""

import contextlib
import io
from pathlib import Path

from edge_router.keys import main as keys_cli


def make_key(file: Path, name: str, *args: str) -> str:
    """`edge-keys create`: the key it prints (once)."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert keys_cli(["--file", str(file), "create", name, *args]) == 0
    return out.getvalue().strip()
