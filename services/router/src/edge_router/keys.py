"""API keys: a JSON file of hashed keys with their rights, and the `edge-keys` CLI.

A key is `sk-edge-` + 32 random bytes (URL-safe base64); only its SHA-256 is stored, with a
name, scopes, local-only flag and priority. A key is shown once, when created. The router
rereads the file when it changes, so `edge-keys revoke` takes effect without a restart.

    edge-keys --file keys.json create NAME [--scope chat ...] [--local-only] [--priority N]
                                           [--rpm N] [--tpm N] [--parallel N]
    edge-keys --file keys.json list
    edge-keys --file keys.json revoke NAME
"""

import argparse
import hashlib
import hmac
import os
import secrets
import sys
import time
from pathlib import Path
from typing import Literal

import msgspec
import structlog

log = structlog.get_logger(__name__)
Scope = Literal["chat", "embeddings", "vision", "rag:read", "rag:write", "status", "admin"]
ALL_SCOPES: tuple[Scope, ...] = (
    "chat",
    "embeddings",
    "vision",
    "rag:read",
    "rag:write",
    "status",  # the status page's data (GET /v1/status)
    "admin",
)
PREFIX = "sk-edge-"


class KeyRecord(msgspec.Struct, frozen=True, kw_only=True):
    name: str
    sha256: str
    scopes: list[Scope] = msgspec.field(default_factory=lambda: ["chat"])
    local_only: bool = False
    """Requests with this key never go to the cloud."""
    priority: int = 0
    """Queue priority of this key's requests (higher is served sooner)."""
    rpm: int = 0
    """Requests per minute; 0 = unlimited."""
    tpm: int = 0
    """Tokens (prompt + completion) per minute; 0 = unlimited."""
    max_parallel: int = 0
    """Requests at once; 0 = unlimited."""
    revoked: bool = False
    created: float = 0.0


_records = msgspec.json.Decoder(list[KeyRecord])


def digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


class KeyStore:
    """The keys file, reread whenever its modification time changes."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._stamp: tuple[int, int, int] | None = None
        self._records: list[KeyRecord] = []

    def records(self) -> list[KeyRecord]:
        try:
            st = self._path.stat()
        except FileNotFoundError:
            return []
        stamp = (st.st_mtime_ns, st.st_ino, st.st_size)  # saves replace the file: new inode
        if stamp != self._stamp:
            self._stamp = stamp
            try:
                self._records = _records.decode(self._path.read_bytes()) if st.st_size else []
            except (OSError, msgspec.DecodeError) as exc:
                # a hand edit gone wrong: keep the keys last read (none at first: all 401)
                log.error("router.keys_file_unreadable", path=str(self._path), error=str(exc))
        return self._records

    def find(self, key: str) -> KeyRecord | None:
        """The record of `key`, compared in constant time against every stored hash."""
        presented = digest(key)
        found = None
        for record in self.records():
            if hmac.compare_digest(record.sha256, presented):
                found = record
        return found

    def save(self, records: list[KeyRecord]) -> None:
        tmp = self._path.with_suffix(".tmp")
        tmp.write_bytes(msgspec.json.format(msgspec.json.encode(records)))
        os.chmod(tmp, 0o600)
        tmp.replace(self._path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="edge-keys", description="Manage the router's API keys")
    parser.add_argument("--file", default=os.environ.get("EDGE_ROUTER_KEYS_FILE", "keys.json"))
    commands = parser.add_subparsers(dest="command", required=True)
    create = commands.add_parser("create", help="create a key and print it (once)")
    create.add_argument("name")
    create.add_argument("--scope", action="append", choices=ALL_SCOPES, dest="scopes")
    create.add_argument("--local-only", action="store_true")
    create.add_argument("--priority", type=int, default=0)
    create.add_argument("--rpm", type=int, default=0, help="requests per minute (0: no limit)")
    create.add_argument("--tpm", type=int, default=0, help="tokens per minute (0: no limit)")
    create.add_argument("--parallel", type=int, default=0, help="requests at once (0: no limit)")
    commands.add_parser("list", help="list keys (names and rights, never the keys)")
    revoke = commands.add_parser("revoke", help="revoke a key by name")
    revoke.add_argument("name")
    args = parser.parse_args(argv)
    store = KeyStore(Path(args.file))
    records = store.records()
    match args.command:
        case "create":
            if any(r.name == args.name for r in records):
                sys.exit(f"edge-keys: a key named {args.name!r} exists")
            key = PREFIX + secrets.token_urlsafe(32)
            record = KeyRecord(
                name=args.name,
                sha256=digest(key),
                scopes=args.scopes or ["chat"],
                local_only=args.local_only,
                priority=args.priority,
                rpm=args.rpm,
                tpm=args.tpm,
                max_parallel=args.parallel,
                created=time.time(),
            )
            store.save([*records, record])
            print(key)
        case "list":
            for r in records:
                state = "revoked" if r.revoked else "active"
                print(
                    f"{r.name}\t{state}\t{','.join(r.scopes)}\tlocal_only={r.local_only}"
                    f"\tpriority={r.priority}"
                )
        case "revoke":
            if not any(r.name == args.name for r in records):
                sys.exit(f"edge-keys: no key named {args.name!r}")
            store.save(
                [
                    msgspec.structs.replace(r, revoked=True) if r.name == args.name else r
                    for r in records
                ]
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
