"""The OpenAI-compatible HTTP server: protocol, scheduler engine, metrics, app, and the serving benchmark."""
