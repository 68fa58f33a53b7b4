"""Pure domain logic: stdlib only, no I/O, no clock reads (time is passed in)."""
