"""What a filter may name: the columns of an enriched alert and the functions over them.

Generated from what is documented elsewhere, so the whitelist and the guide cannot drift apart:
the alert and context columns from the ``lanner.enriched`` Avro schema's field docs, the
features from `broker.domain.features.FEATURES` (the felis schema's ``objects`` columns), and
the functions from `FUNCTIONS` below. docs/filters.md lists them (a test checks that every one
is there).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from broker.domain.features import FEATURES

Type = Literal["int", "float", "string", "bool"]


@dataclass(frozen=True, slots=True)
class Column:
    """A column a filter may name: its SQL type, unit and meaning."""

    name: str
    type: Type
    unit: str | None
    description: str
    group: str  # "alert", "context" or "feature"


_ALERT = (
    ("alert_id", "int", None, "Alert id (Rubin diaSourceId, ZTF candid)."),
    ("object_id", "string", None, "Object id (Rubin diaObjectId as decimal text, ZTF objectId)."),
    ("survey", "string", None, "'lsst' or 'ztf'."),
    ("mjd", "float", "d", "Time of the alert's detection (MJD)."),
    ("band", "string", None, "Band of the alert's detection (u, g, r, i, z, y)."),
    ("mag", "float", "mag", "AB magnitude of the alert's difference flux (NULL for no flux)."),
    ("ra", "float", "deg", "The object's ICRS right ascension."),
    ("dec", "float", "deg", "The object's ICRS declination."),
)
_CONTEXT = (
    ("context", "string", None,
     "The object's context: variable_star, nuclear, supernova_like, agn, orphan, unclear or "
     "solar_system (docs/context.md)."),
    ("context_catalog", "string", None, "Catalog of the counterpart that decided the context."),
    ("context_source_id", "string", None, "That counterpart's id in its catalog."),
    ("context_separation_arcsec", "float", "arcsec", "Distance to that counterpart."),
    ("context_offset_semimajor", "float", None,
     "For a galaxy counterpart: the elliptical radius in semi-major axes (1 on the edge)."),
    ("context_reason", "string", None, "Which context rule decided."),
)

COLUMNS: dict[str, Column] = {
    **{name: Column(name, kind, unit, text, "alert")  # type: ignore[arg-type]
       for name, kind, unit, text in _ALERT},
    **{name: Column(name, kind, unit, text, "context")  # type: ignore[arg-type]
       for name, kind, unit, text in _CONTEXT},
    **{f.name: Column(f.name, f.kind, f.unit, f.description, "feature") for f in FEATURES},
}
assert len(COLUMNS) == len(_ALERT) + len(_CONTEXT) + len(FEATURES), "a feature shadows a column"

#: The columns every filter's output carries whatever it selects (ids, time and position).
ALWAYS = ("alert_id", "object_id", "survey", "mjd", "ra", "dec")


@dataclass(frozen=True, slots=True)
class Function:
    """A function a filter may call. ``signature`` is how the guide writes it."""

    name: str
    signature: str
    returns: str
    description: str


FUNCTIONS: dict[str, Function] = {f.name: f for f in (
    Function("abs", "abs(x)", "number", "Absolute value."),
    Function("sqrt", "sqrt(x)", "float", "Square root (NULL for x < 0)."),
    Function("ln", "ln(x)", "float", "Natural logarithm (NULL for x <= 0); log(x) is the same."),
    Function("log10", "log10(x)", "float", "Base-10 logarithm (NULL for x <= 0)."),
    Function("exp", "exp(x)", "float", "e to the x (NULL where it overflows)."),
    Function("power", "power(x, y)", "float",
             "x to the y (NULL where undefined); pow is the same."),
    Function("floor", "floor(x)", "float", "Largest integer not above x."),
    Function("ceil", "ceil(x)", "float", "Smallest integer not below x."),
    Function("round", "round(x[, digits])", "float",
             "x rounded to digits decimals (0 by default)."),
    Function("least", "least(x, y, ...)", "same", "Smallest argument (NULL if any is NULL)."),
    Function("greatest", "greatest(x, y, ...)", "same", "Largest argument (NULL if any is NULL)."),
    Function("coalesce", "coalesce(x, y, ...)", "same", "First argument that is not NULL."),
    Function("angular_distance", "angular_distance(ra1, dec1, ra2, dec2)", "float",
             "Great-circle distance between two ICRS positions, degrees."),
    Function("matched", "matched('catalog')", "bool",
             "Whether the object has a counterpart in the named reference catalog."),
    Function("match_arcsec", "match_arcsec('catalog')", "float",
             "Distance to the object's nearest counterpart in the catalog, arcsec (NULL: none)."),
    Function("match_count", "match_count('catalog')", "int",
             "How many counterparts the object has in the catalog within its match radius."),
    Function("in_watchlist", "in_watchlist(id)", "bool",
             "Whether the alert lies in a cone of watchlist id (yours, or a public one)."),
    Function("watchlist_arcsec", "watchlist_arcsec(id)", "float",
             "Distance to the centre of the nearest cone of watchlist id it lies in (NULL: none)."),
    Function("watchlist_cone", "watchlist_cone(id)", "string",
             "Name of the nearest cone of watchlist id the alert lies in (NULL: none)."),
    Function("in_watchmap", "in_watchmap(id)", "bool",
             "Whether the alert lies in watchmap id (yours, or a public one)."),
    Function("annotated", "annotated('annotator')", "bool",
             "Whether the named annotator has annotated the object."),
    Function("annotation_class", "annotation_class('annotator')", "string",
             "The class in the annotator's newest annotation of the object (NULL: none)."),
    Function("annotation_score", "annotation_score('annotator')", "float",
             "The score in the annotator's newest annotation of the object (NULL: none)."),
)}
