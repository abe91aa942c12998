"""Per-service wire modules (msgpack Structs on NATS). What every service shares (Accepted,
Failed, Cancel, Alive, subjects, the base Struct) is in edge_common.wire; the llm protocol is
still there too, to move here next to vision's."""
