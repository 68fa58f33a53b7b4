"""Pure LLM rules: the prompt config, routing, token metering, model aggregation and billing
metrics (ARCHITECTURE §4-§6). Stdlib only; no I/O, no clock reads."""
