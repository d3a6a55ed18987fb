"""Real reference catalogues shipped in the package for the demo (provenance in their README)."""

from __future__ import annotations

from tests.support.data import BUNDLED_DATA

BUNDLED = BUNDLED_DATA / "catalogs"
HIPPARCOS = BUNDLED / "hipparcos2.parquet"
OPENNGC = BUNDLED / "openngc.csv"

SIRIUS = (32349, 101.28854, -16.71314)
VEGA = (91262, 279.23411, 38.78299)  # Hipparcos epoch J1991.25
