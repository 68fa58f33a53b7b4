"""Pure money rules: token units, pricing and postings (§6 of the architecture)."""
