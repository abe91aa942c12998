"""The rag protocol (see edge_common.wire for the shared parts). Micro service `rag`:

Request/reply (the answer is the reply; a refusal is a micro error with a wire.ErrorCode):
  `rag.embed.<model>`  EmbedRequest -> Embedded         (texts -> L2-normalised vectors)
  `rag.search`         SearchRequest -> SearchResult    (a query -> the best chunks)
  `rag.delete`         DeleteRequest -> Deleted         (a document, or a whole collection)
  `rag.collections`    CollectionsRequest -> Collections

Streamed, on the worker runtime (edge_common.worker), like a detection:
  `rag.ingest`         IngestRequest with uploaded files (what the router may send)
  `rag.ingest_paths`   IngestRequest with paths on the worker's disk (operators and the
                       `edge-ai rag ingest` CLI only: nats.conf keeps the router off it)
  worker -> reply: Accepted, or a micro error
  worker -> `stream_to`: Alive (as for llm), Progress*, then exactly one Ingested or Failed
  caller -> `rag.cancel.<request_id>`, `rag.alive.<instance>`: as for llm

Vectors travel as little-endian float32 bytes (`Embedded.data`, row-major): what OpenAI's
`encoding_format: base64` carries once base64-encoded, and `numpy.frombuffer` reads as is.
"""

from typing import Annotated, Final, Literal

import msgspec
from msgspec import Meta

from edge_common.wire import PROTOCOL_VERSION, Alive, Failed, Wire, model_token

SERVICE: Final = "rag"
DEFAULT_MODEL: Final = "all-minilm-l6-v2"
"""The embedder every rag worker serves when configured with none."""
MAX_EMBED_INPUTS: Final = 2048
"""Most texts in one EmbedRequest (OpenAI's limit for /v1/embeddings)."""
MAX_TOP_K: Final = 100

CollectionName = Annotated[str, Meta(pattern=r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")]
"""A collection's name: letters, digits, `_` and `-`, at most 64, a letter or digit first."""
FilterValue = str | int | bool | list[str | int]
"""A payload filter's value: equal to it, or (a list) equal to any of it."""
SearchMode = Literal["dense", "hybrid"]


class EmbedRequest(Wire, tag="embed", kw_only=True):
    v: int = PROTOCOL_VERSION
    request_id: str
    model: str
    input: Annotated[list[str], Meta(max_length=MAX_EMBED_INPUTS)] = msgspec.field(
        default_factory=list
    )
    tokens: Annotated[list[list[int]], Meta(max_length=MAX_EMBED_INPUTS)] = msgspec.field(
        default_factory=list
    )
    """Token arrays (ids of this embedder's own tokenizer) instead of `input` texts."""
    truncate: bool = True
    """Cut a text longer than the model's max_tokens (reported in `truncated`); False:
    refuse the request instead (context_length_exceeded)."""


class Embedded(Wire, tag="embedded", kw_only=True):
    model: str
    dimension: int
    data: bytes
    """len(input) x dimension little-endian float32, row-major, each row of norm 1."""
    tokens: list[int]
    """Tokens each input counted (after truncation, special tokens included)."""
    truncated: list[int] = msgspec.field(default_factory=list)
    """Indexes of the inputs that were cut to max_tokens."""


class SearchRequest(Wire, tag="search", kw_only=True):
    v: int = PROTOCOL_VERSION
    request_id: str
    collection: CollectionName
    query: Annotated[str, Meta(min_length=1)]
    top_k: Annotated[int, Meta(ge=1, le=MAX_TOP_K)] = 5
    filter: dict[str, FilterValue] = msgspec.field(default_factory=dict)
    """Payload conditions, all of which a hit meets: `source`, `document_id`, `media_type`,
    `page`, or any key of the documents' `metadata` (as `metadata.<key>`)."""
    mode: SearchMode = "dense"
    """hybrid: dense and BM25 hits fused by reciprocal rank (scores are then RRF scores)."""
    score_threshold: float | None = None
    """Drop hits scoring below this (dense mode: cosine similarity)."""


class Hit(Wire):
    """One chunk, what a citation needs."""

    id: str
    """The chunk's point id."""
    score: float
    document_id: str
    source: str
    """The file's path or upload name."""
    chunk: int
    """Its index within the document."""
    text: str
    section: str = ""
    """The headings above it (`Install > Linux`), if the document had any."""
    page: int | None = None
    """1-based page of a PDF."""
    metadata: dict[str, str] = msgspec.field(default_factory=dict)


class SearchResult(Wire, tag="search_result", kw_only=True):
    hits: list[Hit]
    model: str
    query_tokens: int
    embed_ms: float
    search_ms: float


class UploadedFile(Wire):
    name: Annotated[str, Meta(min_length=1, max_length=1024)]
    """Its name (the document's `source`); the extension picks the loader unless
    `media_type` does."""
    content: bytes
    media_type: str = ""
    """text/plain, text/markdown, text/html, application/pdf; empty = from the name."""


class IngestRequest(Wire, tag="ingest", kw_only=True):
    v: int = PROTOCOL_VERSION
    request_id: str
    collection: CollectionName
    files: list[UploadedFile] = msgspec.field(default_factory=list)
    """Uploads (on `rag.ingest`)."""
    paths: list[str] = msgspec.field(default_factory=list)
    """Absolute paths of files or folders (walked, supported extensions only) on the
    worker's disk (on `rag.ingest_paths` only)."""
    metadata: dict[str, str] = msgspec.field(default_factory=dict)
    """Stored with every chunk (filterable as `metadata.<key>`)."""
    stream_to: str = ""
    """Inbox for the events; the transport fills it in."""


class Progress(Wire, tag="progress", kw_only=True):
    """Sent after each file and every embedded batch of a long one."""

    files_done: int
    files_total: int
    chunks_done: int
    """Chunks embedded and stored so far, over all files."""
    source: str = ""
    """The file being worked on."""
    n: int = 0
    """Numbered like the llm protocol's Delta.n."""


FileOutcome = Literal["added", "replaced", "unchanged", "failed"]


class FileResult(Wire):
    source: str
    outcome: FileOutcome
    document_id: str = ""
    chunks: int = 0
    error: str = ""
    """Why it failed (unreadable, unsupported type, no text)."""


class Ingested(Wire, tag="ingested", kw_only=True):
    """The ingest's last event."""

    collection: str
    files: list[FileResult]
    chunks: int
    """Chunks written by this ingest."""
    seconds: float
    n: int = 0


class DeleteRequest(Wire, tag="delete", kw_only=True):
    v: int = PROTOCOL_VERSION
    request_id: str
    collection: CollectionName
    document_id: str = ""
    source: str = ""
    """Either names the document; both empty deletes the whole collection."""


class Deleted(Wire, tag="deleted", kw_only=True):
    documents: int
    chunks: int


class CollectionsRequest(Wire, tag="collections", kw_only=True):
    v: int = PROTOCOL_VERSION
    request_id: str = ""
    documents_of: str = ""
    """Also list this collection's documents."""


class DocumentInfo(Wire):
    id: str
    source: str
    content_hash: str
    chunks: int
    status: Literal["ready", "ingesting", "deleting"]
    updated_at: float
    """Unix time."""


class CollectionInfo(Wire):
    name: str
    model: str
    """The embedder its vectors came from: searches embed with the same one."""
    dimension: int
    documents: int
    chunks: int


class Collections(Wire, tag="collections_result", kw_only=True):
    collections: list[CollectionInfo]
    documents: list[DocumentInfo] = msgspec.field(default_factory=list)
    """The documents of `documents_of`, if asked."""


class RagStats(Wire):
    """What a rag instance adds to its micro STATS (each endpoint's `data`)."""

    model: str = ""
    """The embedder's id (what /v1/embeddings and /v1/models name)."""
    dimension: int = 0
    max_tokens: int = 0
    """Longest input in tokens; longer ones are truncated (or refused)."""
    device: Literal["cpu", "npu"] = "cpu"
    ingesting: bool = False
    queued: int = 0
    """Ingests waiting for the one running."""


IngestEvent = Progress | Ingested | Failed | Alive
decode_embed = msgspec.msgpack.Decoder(EmbedRequest).decode
decode_embedded = msgspec.msgpack.Decoder(Embedded).decode
decode_search = msgspec.msgpack.Decoder(SearchRequest).decode
decode_search_result = msgspec.msgpack.Decoder(SearchResult).decode
decode_ingest = msgspec.msgpack.Decoder(IngestRequest).decode
decode_ingest_event = msgspec.msgpack.Decoder(IngestEvent).decode
decode_delete = msgspec.msgpack.Decoder(DeleteRequest).decode
decode_deleted = msgspec.msgpack.Decoder(Deleted).decode
decode_collections_request = msgspec.msgpack.Decoder(CollectionsRequest).decode
decode_collections = msgspec.msgpack.Decoder(Collections).decode

SEARCH_SUBJECT: Final = f"{SERVICE}.search"
INGEST_SUBJECT: Final = f"{SERVICE}.ingest"
INGEST_PATHS_SUBJECT: Final = f"{SERVICE}.ingest_paths"
DELETE_SUBJECT: Final = f"{SERVICE}.delete"
COLLECTIONS_SUBJECT: Final = f"{SERVICE}.collections"


def embed_subject(model: str) -> str:
    """`rag.embed.<model>`, the id escaped as for llm (wire.model_token)."""
    return f"{SERVICE}.embed.{model_token(model)}"
