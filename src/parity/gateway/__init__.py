"""Client-facing LLM gateways over the network's prompts (OpenAI- and Ollama-compatible) and
the runner's streaming leg that feeds them."""
