"""Lanner's HTTP API (FastAPI): `api.app.create_app` builds it; `lanner serve` runs it."""
