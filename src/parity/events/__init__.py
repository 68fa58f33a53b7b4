"""Events and webhook subscriptions: an event log per owner, signed deliveries through an
outbox, and a long-poll/SSE stream for clients that cannot receive webhooks."""
