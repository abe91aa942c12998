#!/bin/sh
# Entrypoint of every edge-ai image. Secrets arrive as files (compose secrets under
# /run/secrets) named by NAME_FILE variables. The services read those natively
# (edge_common.settings); nats-server cannot, and nats.conf reads $NAME: for nats, each
# NAME_FILE=/run/secrets/... becomes NAME, read from that file, so that no password is
# written in compose.yaml or .env. Then it runs the image's service: nats-server, or
# `python -m edge_<service>`.
set -eu
if [ "$EDGE_SERVICE" = nats ]; then
    for name in $(env | sed -n 's|^\([A-Za-z_][A-Za-z0-9_]*\)_FILE=/run/secrets/.*|\1|p'); do
        eval "file=\${${name}_FILE}"
        value=$(cat "$file")
        export "$name=$value"
        unset "${name}_FILE"
    done
    exec nats-server "$@"
fi
exec python -m "edge_$EDGE_SERVICE" "$@"
