"""The document registry: SQLite in WAL mode, the source of truth for what each collection
holds. A document's row names its committed generation of chunks and, while an ingest or a
delete of it is under way, what is in flight: after a crash, `Library.recover` reads these
rows to roll each in-flight document forward or back (no duplicate, no orphan chunk)."""

import json
import sqlite3
import threading
import time
from pathlib import Path
from typing import Literal

import msgspec

Status = Literal["ready", "ingesting", "deleting"]
SCHEMA = """
CREATE TABLE IF NOT EXISTS collections (
    name TEXT PRIMARY KEY, model TEXT NOT NULL, dimension INTEGER NOT NULL,
    created_at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS documents (
    id TEXT PRIMARY KEY, collection TEXT NOT NULL, source TEXT NOT NULL,
    media_type TEXT NOT NULL, content_hash TEXT NOT NULL,
    generation INTEGER NOT NULL,          -- the committed chunks' generation (0: none yet)
    chunk_ids TEXT NOT NULL,              -- JSON list of the committed chunks' point ids
    status TEXT NOT NULL,                 -- ready | ingesting | deleting
    pending_generation INTEGER NOT NULL DEFAULT 0,
    pending_hash TEXT NOT NULL DEFAULT '',
    pending_chunks INTEGER NOT NULL DEFAULT 0,
    created_at REAL NOT NULL, updated_at REAL NOT NULL,
    UNIQUE (collection, source));
"""


class Document(msgspec.Struct, frozen=True, kw_only=True):
    id: str
    collection: str
    source: str
    media_type: str
    content_hash: str
    generation: int
    chunk_ids: list[str]
    status: Status
    pending_generation: int
    pending_hash: str
    pending_chunks: int
    created_at: float
    updated_at: float


class CollectionRow(msgspec.Struct, frozen=True, kw_only=True):
    name: str
    model: str
    dimension: int


class Registry:
    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        # one connection shared by the worker's threads, serialised by our lock
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.row_factory = sqlite3.Row
        self._lock = threading.Lock()
        with self._lock:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")  # WAL: durable at checkpoints, safe
            self._db.executescript(SCHEMA)

    def _write(self, sql: str, args: tuple[object, ...] = ()) -> None:
        with self._lock:
            self._db.execute(sql, args)  # autocommit: each write is its own transaction

    def _rows(self, sql: str, args: tuple[object, ...] = ()) -> list[sqlite3.Row]:
        with self._lock:
            return self._db.execute(sql, args).fetchall()

    # collections
    def collection(self, name: str) -> CollectionRow | None:
        rows = self._rows("SELECT name, model, dimension FROM collections WHERE name = ?", (name,))
        return CollectionRow(**dict(rows[0])) if rows else None

    def collections(self) -> list[CollectionRow]:
        rows = self._rows("SELECT name, model, dimension FROM collections ORDER BY name")
        return [CollectionRow(**dict(r)) for r in rows]

    def add_collection(self, name: str, model: str, dimension: int) -> None:
        self._write(
            "INSERT OR IGNORE INTO collections VALUES (?, ?, ?, ?)",
            (name, model, dimension, time.time()),
        )

    def remove_collection(self, name: str) -> None:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            self._db.execute("DELETE FROM documents WHERE collection = ?", (name,))
            self._db.execute("DELETE FROM collections WHERE name = ?", (name,))
            self._db.execute("COMMIT")

    # documents
    def document(self, collection: str, *, source: str = "", id: str = "") -> Document | None:
        sql = "SELECT * FROM documents WHERE collection = ? AND " + (
            "id = ?" if id else "source = ?"
        )
        rows = self._rows(sql, (collection, id or source))
        return _document(rows[0]) if rows else None

    def documents(
        self, collection: str | None = None, status: Status | None = None
    ) -> list[Document]:
        sql, args = "SELECT * FROM documents WHERE 1", []
        if collection is not None:
            sql, args = sql + " AND collection = ?", [*args, collection]
        if status is not None:
            sql, args = sql + " AND status = ?", [*args, status]
        return [_document(r) for r in self._rows(sql + " ORDER BY source", tuple(args))]

    def counts(self, collection: str) -> tuple[int, int]:
        """(documents, committed chunks) of a collection."""
        rows = self._rows(
            "SELECT COUNT(*), COALESCE(SUM(json_array_length(chunk_ids)), 0) FROM documents"
            " WHERE collection = ? AND generation > 0",
            (collection,),
        )
        return rows[0][0], rows[0][1]

    def begin_ingest(
        self, id: str, collection: str, source: str, media_type: str, content_hash: str, chunks: int
    ) -> int:
        """Record an ingest of `chunks` chunks in flight (before the first is written); its
        generation, newer than any the document had."""
        now = time.time()
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            row = self._db.execute(
                "SELECT generation, pending_generation FROM documents WHERE id = ?", (id,)
            ).fetchone()
            generation = (max(row[0], row[1]) if row else 0) + 1
            if row is None:
                self._db.execute(
                    "INSERT INTO documents VALUES (?, ?, ?, ?, '', 0, '[]', 'ingesting',"
                    " ?, ?, ?, ?, ?)",
                    (
                        id,
                        collection,
                        source,
                        media_type,
                        generation,
                        content_hash,
                        chunks,
                        now,
                        now,
                    ),
                )
            else:
                self._db.execute(
                    "UPDATE documents SET status = 'ingesting', media_type = ?,"
                    " pending_generation = ?, pending_hash = ?, pending_chunks = ?,"
                    " updated_at = ? WHERE id = ?",
                    (media_type, generation, content_hash, chunks, now, id),
                )
            self._db.execute("COMMIT")
        return generation

    def commit_ingest(self, id: str, chunk_ids: list[str]) -> None:
        """The pending generation is now the document's (its chunks are live)."""
        self._write(
            "UPDATE documents SET status = 'ready', generation = pending_generation,"
            " content_hash = pending_hash, chunk_ids = ?, pending_generation = 0,"
            " pending_hash = '', pending_chunks = 0, updated_at = ? WHERE id = ?",
            (json.dumps(chunk_ids), time.time(), id),
        )

    def abandon_ingest(self, id: str) -> None:
        """The pending generation is gone: back to the committed one, or no row if none."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            self._db.execute("DELETE FROM documents WHERE id = ? AND generation = 0", (id,))
            self._db.execute(
                "UPDATE documents SET status = 'ready', pending_generation = 0,"
                " pending_hash = '', pending_chunks = 0 WHERE id = ?",
                (id,),
            )
            self._db.execute("COMMIT")

    def begin_delete(self, id: str) -> None:
        self._write(
            "UPDATE documents SET status = 'deleting', updated_at = ? WHERE id = ?",
            (time.time(), id),
        )

    def remove(self, id: str) -> None:
        self._write("DELETE FROM documents WHERE id = ?", (id,))

    def close(self) -> None:
        with self._lock:
            self._db.close()


def _document(row: sqlite3.Row) -> Document:
    fields = dict(row) | {"chunk_ids": json.loads(row["chunk_ids"])}
    return Document(**fields)
