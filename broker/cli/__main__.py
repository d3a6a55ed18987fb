"""``python -m broker.cli``: the ``lanner`` command (so `broker.supervisor` starts children)."""

from broker.cli import app

app()
