"""Serving: the OpenAI-compatible API server (app.py, schemas.py), the HTTP plumbing its pages share
(http.py) and the static pages (static/)."""
