"""`localcoder serve`: OpenAI- and Anthropic-compatible HTTP server over the runtime (imported only when serving)."""
