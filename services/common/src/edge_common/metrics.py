"""Prometheus metrics: every service serves its process's registry on GET /metrics.

Metrics are module-level prometheus-client objects in each service's own `metrics.py`;
values that are state rather than events (queue depth, temperature, breakers) are read at
scrape time by a collector the service registers.
"""

from litestar import Response, get
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest


@get("/metrics", sync_to_thread=False, include_in_schema=False)
def metrics() -> Response[bytes]:
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)
