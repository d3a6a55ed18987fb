"""Numbers fixed by design, in one place.

Changing one of these changes stored data or the wire contract; they are not settings.
"""

from __future__ import annotations

#: Magic byte of the Confluent wire format.
WIRE_MAGIC = 0
#: Length of the Confluent wire-format header: magic byte + 4-byte big-endian schema id.
WIRE_HEADER_SIZE = 5

#: Rubin photometric bands, in wavelength order.
RUBIN_BANDS = ("u", "g", "r", "i", "z", "y")

#: AB magnitude zero point for fluxes in nanojansky: m = -2.5 log10(f / nJy) + 31.4.
NJY_AB_ZEROPOINT = 31.4

#: The most previous sources a Rubin alert carries (about one year of history).
MAX_PRV_SOURCES = 30

#: Default seconds to wait for each local service to answer after start.
KAFKA_START_TIMEOUT_S = 90.0
CASSANDRA_START_TIMEOUT_S = 180.0
MARIADB_START_TIMEOUT_S = 60.0
#: Seconds between SIGTERM and SIGKILL when stopping a local service.
STOP_TIMEOUT_S = 45.0

#: Default Qserv partitioning of the archive: 85 stripes of 12 sub-stripes gives 8,983 chunks of
#: about 2.1 deg (Qserv's test-dataset parameters), a good size for one to a few shard servers.
#: Changing it on an existing archive needs a reload: rows carry their chunk ids.
DEFAULT_CHUNK_STRIPES = 85
DEFAULT_CHUNK_SUB_STRIPES = 12
