"""schemathesis over the router's OpenAPI document, with a valid key, against the real
stack: hundreds of generated requests, valid and not, on every operation. None may get a
5xx, and every answer must be what the document says (status, content type, headers, body).
"""

import json
import re
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from api_keys import make_key

# Left out: schemathesis' request-acceptance checks, which hold the server to JSON Schema's
# notion of types. OpenAI rejects 5.0 for an integer and so do we, but JSON Schema calls it an
# integer; and msgspec accepts a lone content part without its `type` tag.
CHECKS_LEFT_OUT = "positive_data_acceptance,negative_data_rejection"


@pytest.mark.timeout(420)  # ~400 requests, local generations and detections included
def test_no_server_errors_and_every_answer_as_documented(
    router_with, launch, stack, tmp_path: Path
) -> None:
    keys_file = tmp_path / "keys.json"
    key = make_key(keys_file, "schemathesis", "--scope", "admin")
    # detect, embeddings and the RAG endpoints are fuzzed too
    vision = launch("vision", tmp_path, stack.nats.env)
    rag = launch("rag", tmp_path, {**stack.nats.env, "EDGE_RAG_DATA_DIR": str(tmp_path / "rag")})
    # small generations: the document's max_tokens bound is the router's configured one
    # a rag answer that takes longer is a documented 503 before schemathesis' 60 s timeout
    url = router_with(
        EDGE_ROUTER_KEYS_FILE=str(keys_file),
        EDGE_ROUTER_LIMITS=json.dumps({"max_tokens": 16}),
        EDGE_ROUTER_RAG_TIMEOUT_S="20",
    ).url
    junit = tmp_path / "junit.xml"
    argv = [str(Path(sys.executable).with_name("st")), "run", f"{url}/schema/openapi.json"]
    argv += ["--header", f"Authorization: Bearer {key}", "--exclude-checks", CHECKS_LEFT_OUT]
    argv += ["--max-examples", "10", "--seed", "1", "--request-timeout", "60"]
    argv += ["--report", "junit", "--report-junit-path", str(junit)]
    try:
        run = subprocess.run(argv, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    finally:
        vision.proc.stop()
        rag.proc.stop()
    assert run.returncode == 0, run.stdout[-6000:]
    suite = ET.parse(junit).getroot().find("testsuite")
    assert suite is not None
    assert {case.get("name") for case in suite.iter("testcase")} >= {
        "POST /v1/chat/completions",
        "POST /v1/route/explain",
        "GET /v1/models",
        "GET /v1/models/{model}",
        "GET /health",
        "POST /v1/vision/detect",
        "POST /v1/embeddings",
        "POST /v1/rag/search",
        "POST /v1/rag/ingest",
        "GET /v1/rag/collections",
        "GET /v1/rag/collections/{collection}",
        "DELETE /v1/rag/collections/{collection}",
        "DELETE /v1/rag/collections/{collection}/documents/{document_id}",
        "GET /v1/status",
    }
    assert (int(suite.get("failures", -1)), int(suite.get("errors", -1))) == (0, 0)
    generated = re.search(r"(\d+) generated", run.stdout)  # the summary's count
    assert generated is not None, run.stdout
    assert int(generated[1]) >= 200, run.stdout
