"""parity-runner: the reference runner. It signs in with its wallet, registers, heartbeats,
and takes work by pull (long-poll claims) and by push offers (its own signed webhook)."""

RUNNER_VERSION = "0.1.0"
