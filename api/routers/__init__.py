"""Thin routers, one per feature: parse the request, call `api.services`, shape the answer."""
