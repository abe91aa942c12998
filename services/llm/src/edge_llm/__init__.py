"""NATS service `llm`: chat generation with token streaming and cancel, on a pluggable backend."""
