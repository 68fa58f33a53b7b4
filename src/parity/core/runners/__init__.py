"""Pure runner rules: heartbeat liveness and lease timing."""
