"""Thin routers, one per feature: parse the request, call `broker.queries`, shape the answer."""
