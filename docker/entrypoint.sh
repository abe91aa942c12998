#!/bin/sh
# Entrypoint of every edge-ai image. Secrets arrive as files (compose secrets under
# /run/secrets): each NAME_FILE=/run/secrets/... variable becomes NAME, read from that file,
# so that no password is written in compose.yaml or .env; the services and nats.conf read
# NAME. (Other *_FILE settings, such as EDGE_ROUTER_KEYS_FILE, are left alone.)
# Then it runs the image's service: nats-server, or `python -m edge_<service>`.
set -eu
for name in $(env | sed -n 's|^\([A-Za-z_][A-Za-z0-9_]*\)_FILE=/run/secrets/.*|\1|p'); do
    eval "file=\${${name}_FILE}"
    value=$(cat "$file")
    export "$name=$value"
    unset "${name}_FILE"
done
if [ "$EDGE_SERVICE" = nats ]; then
    exec nats-server "$@"
fi
exec python -m "edge_$EDGE_SERVICE" "$@"
