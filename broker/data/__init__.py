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
from broker.domain.described import CatalogDescription
from broker.domain.described import ColumnDescription as C

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
    #: What TAP_SCHEMA says of the catalog and its columns (units, UCDs, descriptions).
    description: CatalogDescription | None = None

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


_HIPPARCOS = CatalogDescription(
    "Hipparcos, the new reduction (van Leeuwen 2007, A&A 474, 653; CDS I/311): astrometry at "
    "epoch J1991.25 and Hp photometry of 117,955 stars.",
    {"hip": C(None, None, "Hipparcos identifier (HIP)."),
     "ra": C(description="ICRS right ascension at epoch J1991.25."),
     "dec": C(description="ICRS declination at epoch J1991.25."),
     "plx": C("mas", "pos.parallax.trig", "Trigonometric parallax."),
     "pmra": C("mas/yr", "pos.pm;pos.eq.ra", "Proper motion in RA (mu_alpha cos delta)."),
     "pmdec": C("mas/yr", "pos.pm;pos.eq.dec", "Proper motion in declination."),
     "e_ra": C("mas", "stat.error;pos.eq.ra", "Formal error of ra (times cos dec)."),
     "e_dec": C("mas", "stat.error;pos.eq.dec", "Formal error of dec."),
     "e_plx": C("mas", "stat.error;pos.parallax.trig", "Formal error of plx."),
     "e_pmra": C("mas/yr", "stat.error;pos.pm;pos.eq.ra", "Formal error of pmra."),
     "e_pmdec": C("mas/yr", "stat.error;pos.pm;pos.eq.dec", "Formal error of pmdec."),
     "hpmag": C("mag", "phot.mag", "Hipparcos magnitude Hp."),
     "e_hpmag": C("mag", "stat.error;phot.mag", "Error of hpmag."),
     "shp": C("mag", "stat.stdev;phot.mag", "Scatter of the Hp measurements."),
     "b_v": C("mag", "phot.color;em.opt.B;em.opt.V", "Colour index B-V."),
     "e_b_v": C("mag", "stat.error;phot.color", "Error of b_v."),
     "v_i": C("mag", "phot.color;em.opt.V;em.opt.I", "Colour index V-I."),
     "var": C("mas", "stat.stdev", "Cosmic dispersion added to a stochastic solution."),
     "va": C(None, "meta.code;src.var", "Reference to the variability annex (0, 1, 2)."),
     "sn": C(None, "meta.code", "Solution type of the new reduction."),
     "so": C(None, "meta.code", "Solution type of the original catalogue."),
     "nc": C(None, "meta.number", "Number of components."),
     "ntr": C(None, "meta.number", "Number of field transits used."),
     "f1": C("%", "stat.fit.residual", "Percentage of rejected data."),
     "f2": C(None, "stat.fit.goodness", "Goodness of fit."),
     "ic": C(None, "meta.ref", "Entry in one of the supplementary catalogues."),
     })

_OPENNGC = CatalogDescription(
    "OpenNGC (Mattia Verga, CC BY-SA 4.0): the NGC, IC and Messier objects with their sizes, "
    "magnitudes and identifiers; the demo loads its galaxies only.",
    {"id": C(description="OpenNGC name (NGC0224, IC0001, ...)."),
     "type": C(None, "src.class", "Object type code (G: galaxy, ** : double star, ...)."),
     "type_desc": C(None, "src.class", "Object type, in words."),
     "ra_deg": C(description="ICRS right ascension (J2000)."),
     "dec_deg": C(description="ICRS declination (J2000)."),
     "const": C(None, "meta.id.part", "Constellation."),
     "majax_arcmin": C("arcmin", "phys.angSize", "Major axis diameter."),
     "minax_arcmin": C("arcmin", "phys.angSize", "Minor axis diameter."),
     "pa_deg": C("deg", "pos.posAng", "Position angle of the major axis, east of north."),
     "bmag": C("mag", "phot.mag;em.opt.B", "Apparent B magnitude."),
     "vmag": C("mag", "phot.mag;em.opt.V", "Apparent V magnitude."),
     "jmag": C("mag", "phot.mag;em.IR.J", "2MASS J magnitude."),
     "hmag": C("mag", "phot.mag;em.IR.H", "2MASS H magnitude."),
     "kmag": C("mag", "phot.mag;em.IR.K", "2MASS K magnitude."),
     "sb_mag_arcsec2": C("mag/arcsec2", "phot.mag.sb", "Mean surface brightness in V."),
     "hubble": C(None, "src.morph.type", "Hubble morphological type of a galaxy."),
     "parallax_mas": C("mas", "pos.parallax", "Parallax."),
     "pmra_mas_yr": C("mas/yr", "pos.pm;pos.eq.ra", "Proper motion in RA."),
     "pmdec_mas_yr": C("mas/yr", "pos.pm;pos.eq.dec", "Proper motion in declination."),
     "radvel_km_s": C("km/s", "spect.dopplerVeloc", "Radial velocity."),
     "redshift": C(None, "src.redshift", "Redshift."),
     "messier": C(None, "meta.id.cross", "Messier number."),
     "ngc": C(None, "meta.id.cross", "Cross-identification in the NGC."),
     "ic": C(None, "meta.id.cross", "Cross-identification in the IC."),
     "identifiers": C(None, "meta.id.cross", "Identifiers in other catalogues."),
     "common_names": C(None, "meta.id", "Common names."),
     })

#: The reference catalogs `lanner demo` loads, in loading order.
CATALOGS = (
    # The Hipparcos new reduction: positions at J1991.25, proper motions in mas/yr.
    BundledCatalog("hipparcos", "hipparcos2.parquet", "hip", "ra", "dec", "star",
                   motion=MotionSpec("pmra", "pmdec", 1991.25), description=_HIPPARCOS),
    # OpenNGC's galaxies only (type G): its other rows (stars, clusters, nebulae, galaxy pairs
    # and groups) have no galaxy's ellipse and would be judged as galaxies. A 10' overlap: the
    # rules judge a galaxy out to 2.5 semi-major axes, and all but 86 of its galaxies reach no
    # further than 10' (docs/context.md).
    BundledCatalog("openngc", "openngc.csv", "id", "ra_deg", "dec_deg", "galaxy",
                   ShapeSpec("majax_arcmin", "minax_arcmin", "pa_deg"), only=("type", ("G",)),
                   overlap_deg=10.0 / 60.0, description=_OPENNGC),
)


def ztf_alerts() -> Traversable:
    """The folder of the bundled ZTF alert files, for `broker.streaming.replay.iter_alert_files`."""
    return files(__name__) / "ztf"
