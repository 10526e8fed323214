"""OpenAI-compatible reverse proxy for LLM servers, with a concurrency monitor built in."""
