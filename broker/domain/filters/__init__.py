"""User filters: the language (`language`), its columns and functions (`columns`), and its
vectorised evaluation over a batch of enriched alerts (`evaluate`). docs/filters.md is the
guide."""

from broker.domain.filters.columns import ALWAYS, COLUMNS, FUNCTIONS
from broker.domain.filters.evaluate import AlertBatch, FilterRuntimeError, Selection, run
from broker.domain.filters.language import FilterError, Plan, Scope, compile_filter

__all__ = ["ALWAYS", "COLUMNS", "FUNCTIONS", "AlertBatch", "FilterError", "FilterRuntimeError",
           "Plan", "Scope", "Selection", "compile_filter", "run"]
