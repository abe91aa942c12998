"""The keys file as the router reads it: a hand edit gone wrong locks nobody out and
lets nobody in."""

import os
from pathlib import Path

from edge_router.keys import KeyRecord, KeyStore, digest


def record(name: str, key: str) -> KeyRecord:
    return KeyRecord(name=name, sha256=digest(key), scopes=["chat"], created=0.0)


def test_an_unreadable_keys_file_keeps_the_keys_last_read(tmp_path: Path) -> None:
    """Valid keys, then garbage written over the file: the keys read before still work
    (no 500 per request); a store that never read the file sees no key at all."""
    path = tmp_path / "keys.json"
    store = KeyStore(path)
    store.save([record("alice", "sk-edge-a")])
    assert store.find("sk-edge-a") is not None
    path.write_text("garbage{")
    os.utime(path, ns=(1, 1))  # a new stamp even within the same clock tick
    assert store.find("sk-edge-a") is not None
    assert KeyStore(path).find("sk-edge-a") is None
