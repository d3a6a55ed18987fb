"""Data shipped inside the package: the sample alerts and reference catalogs of `lanner demo`.

- ``ztf/``: 53 real ZTF public alert packets (three single alerts and 50 from one exposure).
- ``catalogs/``: Hipparcos (new reduction, 117,955 stars) and OpenNGC (14,033 objects).

Provenance, citations and licences are in the README.md next to each folder's files and ship
with them. The files are read through `importlib.resources`, so they are found wherever the
package is installed (a wheel, an editable install, a zip archive); the tests read the same
copy. Declared as package data in pyproject.toml (``[tool.setuptools.package-data]``).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from importlib.resources import as_file, files
from importlib.resources.abc import Traversable
from pathlib import Path

from broker.domain.catalogs import MotionSpec, ShapeSpec

__all__ = ["CATALOGS", "BundledCatalog", "ztf_alerts"]


@dataclass(frozen=True, slots=True)
class BundledCatalog:
    """A reference catalog file shipped in the package, and the columns to load it by."""

    name: str
    filename: str
    id_col: str
    ra_col: str
    dec_col: str
    kind: str = "generic"
    shape: ShapeSpec | None = None
    motion: MotionSpec | None = None
    #: Only the rows whose column (first) is one of the values (second) are loaded.
    only: tuple[str, tuple[str, ...]] | None = None
    #: The catalog's overlap radius (None: the store's, 1').
    overlap_deg: float | None = None

    def resource(self) -> Traversable:
        """The file, as an `importlib.resources` traversable."""
        return files(__name__) / "catalogs" / self.filename

    @contextmanager
    def path(self) -> Iterator[Path]:
        """A file-system path of the file while the context lasts.

        The file itself when the package is a folder; a temporary copy when it is zipped.
        """
        with as_file(self.resource()) as path:
            yield path


#: The reference catalogs `lanner demo` loads, in loading order.
CATALOGS = (
    # The Hipparcos new reduction: positions at J1991.25, proper motions in mas/yr.
    BundledCatalog("hipparcos", "hipparcos2.parquet", "hip", "ra", "dec", "star",
                   motion=MotionSpec("pmra", "pmdec", 1991.25)),
    # OpenNGC's galaxies only (type G): its other rows (stars, clusters, nebulae, galaxy pairs
    # and groups) have no galaxy's ellipse and would be judged as galaxies. A 10' overlap: the
    # rules judge a galaxy out to 2.5 semi-major axes, and all but 86 of its galaxies reach no
    # further than 10' (docs/context.md).
    BundledCatalog("openngc", "openngc.csv", "id", "ra_deg", "dec_deg", "galaxy",
                   ShapeSpec("majax_arcmin", "minax_arcmin", "pa_deg"), only=("type", ("G",)),
                   overlap_deg=10.0 / 60.0),
)


def ztf_alerts() -> Traversable:
    """The folder of the bundled ZTF alert files, for `broker.streaming.replay.iter_alert_files`."""
    return files(__name__) / "ztf"
