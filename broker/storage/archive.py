"""The columns of the rows the archive answers with, named once in the felis schema.

Rows are plain dicts with these names, identical across backends (Cassandra or SQLite for light
curves; MariaDB or SQLite shards for the object catalog), so the API and the tests do not care
which backend answered. The store interfaces are in `broker.storage.stores`.
"""

from __future__ import annotations

from broker.domain.features import FEATURES
from broker.storage import schema

#: Columns of a detection (an alert row, a light-curve point), in order.
DETECTION_COLUMNS = schema.columns("alert_rows")

#: Columns of a forced measurement, in order.
FORCED_COLUMNS = schema.columns("embedded_forced_photometry")

#: Bookkeeping columns of an object row that are not part of what it answers with: which
#: detection gave the stored position (see `broker.storage.catalog`).
POSITION_EPOCH_COLUMNS = ("position_mjd", "position_source_id")

#: The feature columns of an object row (`broker.domain.features.FEATURES`), written by the
#: enrich stage and read apart from the rest of the row (they are NULL until it runs).
FEATURE_COLUMNS = tuple(f.name for f in FEATURES)

#: Columns of an object row as the archive answers with it (features apart), in order.
OBJECT_COLUMNS = tuple(c for c in schema.columns("objects")
                       if c not in POSITION_EPOCH_COLUMNS and c not in FEATURE_COLUMNS)
