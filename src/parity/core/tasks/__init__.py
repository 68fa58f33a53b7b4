"""Pure task rules: the status machine, the retry policy and runner placement."""
