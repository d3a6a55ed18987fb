"""Wire models of the HTTP API: what clients get, kept apart from the storage rows.

The storage layer answers with plain dicts named by ``OBJECT_COLUMNS``, ``DETECTION_COLUMNS`` and
``FORCED_COLUMNS`` (`broker.storage.archive`); the models here are generated from the same
columns of the felis schema (types, nullability, descriptions and units), so there is no second
description of a table, and add the conveniences a client should not have to compute (AB
magnitudes per band, links). Non-finite floats become ``null``: JSON has no NaN.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field, create_model

from broker.domain.alerts import flux_to_mag, mag_err
from broker.domain.archive import BANDS
from broker.storage import schema
from broker.storage.archive import (
    DETECTION_COLUMNS,
    FEATURE_COLUMNS,
    FORCED_COLUMNS,
    OBJECT_COLUMNS,
)


def _finite(value: Any) -> Any:
    """``value`` with non-finite floats replaced by None."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _columns(row: Mapping[str, Any], columns: tuple[str, ...]) -> dict[str, Any]:
    return {name: _finite(row.get(name)) for name in columns}


class ErrorOut(BaseModel):
    """Every error answer: one human-readable line, plus the details of a validation error."""

    detail: str = Field(description="What went wrong, in one line.")
    errors: list[dict[str, Any]] | None = Field(
        None, description="Validation errors one by one (only for 422 answers).")


def _described(table: str, columns: tuple[str, ...], *,
               nullable: tuple[str, ...] = ()) -> dict[str, Any]:
    """Pydantic fields of stored columns, typed and described by the felis schema."""
    docs = schema.column_docs(table)
    fields: dict[str, Any] = {}
    for name in columns:
        doc = docs[name]
        kind: Any = doc.python_type
        if doc.nullable or name in nullable:
            kind = kind | None
        unit = f" Unit: {doc.unit}." if doc.unit else ""
        fields[name] = (kind, Field(description=f"{doc.description}{unit}"))
    return fields


def _magnitude_fields() -> dict[str, Any]:
    fields: dict[str, Any] = {}
    for band in BANDS:
        fields[f"{band}_last_mag"] = (
            float | None,
            Field(description=f"AB magnitude of |{band}_last_flux| (zero point 31.4 for nJy)."))
        fields[f"{band}_last_mag_err"] = (
            float | None, Field(description=f"Error of {band}_last_mag (first order)."))
    return fields


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


if TYPE_CHECKING:
    # Type checkers cannot follow create_model; the generated fields are checked by the tests.
    ObjectFields = _Strict
else:
    ObjectFields = create_model(
        "ObjectFields", __base__=_Strict, __module__=__name__,
        **_described("objects", OBJECT_COLUMNS), **_magnitude_fields())
    ObjectFields.__doc__ = "The stored columns of an object, plus its latest magnitude per band."


def object_fields(row: Mapping[str, Any]) -> dict[str, Any]:
    """The values of `ObjectFields` for a stored object row."""
    values = _columns(row, OBJECT_COLUMNS)
    for band in BANDS:
        flux, err = values[f"{band}_last_flux"], values[f"{band}_last_flux_err"]
        values[f"{band}_last_mag"] = flux_to_mag(flux)
        values[f"{band}_last_mag_err"] = mag_err(flux, err)
    return values


class ObjectLinks(BaseModel):
    """Where to read more about an object."""

    self: str = Field(description="This object.")
    lightcurve: str = Field(description="Its detections and forced photometry.")
    cutouts: dict[str, str] = Field(
        description="Cutouts of its latest alert, by kind (science, template, difference).")
    crossmatches: str = Field(description="Its neighbours in the reference catalogs.")


if TYPE_CHECKING:
    _ContextFields = BaseModel
    _MatchFields = BaseModel
    _FeatureFields = BaseModel
else:
    _FeatureFields = create_model(
        "_FeatureFields", __module__=__name__, **_described("objects", FEATURE_COLUMNS))
    _ContextFields = create_model(
        "_ContextFields", __module__=__name__,
        **_described("object_context", schema.columns("object_context")))
    _MatchFields = create_model(
        "_MatchFields", __module__=__name__,
        **_described("object_matches", schema.columns("object_matches")))


class ContextOut(_ContextFields):
    """What the object's position lies on or near (rules in docs/context.md)."""


class MatchOut(_MatchFields):
    """One counterpart of the object in a reference catalog."""


class FeaturesOut(_FeatureFields):
    """The object's light-curve features from its whole history (docs/features.md)."""


class WatchlistMembership(BaseModel):
    """A watchlist cone the object has been found in."""

    watchlist_id: int
    owner: str
    name: str
    cone_id: int
    cone_name: str


class WatchmapMembership(BaseModel):
    """A watchmap the object has been found in."""

    watchmap_id: int
    owner: str
    name: str


class AnnotationOut(BaseModel):
    """An annotator's annotation of an object (one version)."""

    annotation_id: int
    annotator: str = Field(description="Who posted it (a user with an annotator token).")
    version: int = Field(description="1, then one more at each of the annotator's posts.")
    class_: str = Field(alias="class", description="The class given.")
    score: float | None = Field(description="The score given, if any.")
    data: Any = Field(description="Anything else the annotator said (JSON).")
    created_at: datetime

    model_config = {"populate_by_name": True}


class ObjectOut(ObjectFields):
    """One object: its stored row, latest magnitudes, context, counterparts and links."""

    context: ContextOut | None = Field(
        None, description="Its context from the enrich stage; null before enrich saw it.")
    matches: list[MatchOut] = Field(
        default_factory=list, description="Its counterparts within each reference catalog's "
        "match radius, by catalog, nearest first.")
    features: FeaturesOut | None = Field(
        None, description="Its features from the enrich stage (docs/features.md); null before "
        "enrich saw it.")
    watchlists: list[WatchlistMembership] = Field(
        default_factory=list, description="The watchlist cones it has been found in that the "
        "caller may see (their own lists and public ones).")
    watchmaps: list[WatchmapMembership] = Field(
        default_factory=list, description="The watchmaps it has been found in that the caller "
        "may see.")
    annotations: list[AnnotationOut] = Field(
        default_factory=list, description="Each annotator's newest annotation of it.")
    links: ObjectLinks

    @classmethod
    def from_row(cls, row: Mapping[str, Any], links: ObjectLinks,
                 context: Mapping[str, Any] | None = None,
                 matches: Sequence[Mapping[str, Any]] | None = None,
                 features: Mapping[str, Any] | None = None) -> ObjectOut:
        # An object enriched before features were stored has a context and no feature yet.
        known = features is not None and any(v is not None for v in features.values())
        return cls.model_validate({
            **object_fields(row), "links": links,
            "context": None if context is None else _columns(context, tuple(context)),
            "matches": [_columns(m, tuple(m)) for m in matches or []],
            "features": _columns(features, FEATURE_COLUMNS) if known and features else None})


if TYPE_CHECKING:
    _DetectionFields = BaseModel
    _ForcedFields = BaseModel
else:
    # chunk_id and hpx29 are null where the light-curve store does not keep them (Cassandra).
    _DetectionFields = create_model(
        "_DetectionFields", __module__=__name__,
        **_described("alert_rows", DETECTION_COLUMNS, nullable=("chunk_id", "hpx29")))
    _ForcedFields = create_model(
        "_ForcedFields", __module__=__name__,
        **_described("embedded_forced_photometry", FORCED_COLUMNS))


class DetectionOut(_DetectionFields):
    """One detection (difference-image source) with its AB magnitude."""

    mag: float | None = Field(description="AB magnitude of |psf_flux| (zero point 31.4).")
    mag_err: float | None = Field(description="Error of mag (first order).")

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> DetectionOut:
        values = _columns(row, DETECTION_COLUMNS)
        return cls(**values, mag=flux_to_mag(values["psf_flux"]),
                   mag_err=mag_err(values["psf_flux"], values["psf_flux_err"]))


class ForcedOut(_ForcedFields):
    """One forced measurement at the object's position."""

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> ForcedOut:
        return cls(**_columns(row, FORCED_COLUMNS))


class LightCurveOut(BaseModel):
    """The light curve of an object, oldest first."""

    object_id: str
    detections: list[DetectionOut]
    forced_photometry: list[ForcedOut]


class ConeRow(ObjectFields):
    """An object inside a cone."""

    id: str = Field(description="Object id (same as object_id).")
    distance_arcsec: float = Field(description="Angular distance from the cone centre, arcsec.")

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> ConeRow:
        return cls.model_validate({**object_fields(row), "id": str(row["object_id"]),
                                   "distance_arcsec": float(row["distance_arcsec"])})


class CatalogConeRow(BaseModel):
    """A row of a reference catalog inside a cone: its id and position, every column of the
    catalog, and the distance."""

    model_config = ConfigDict(extra="allow")

    id: str = Field(description="The catalog's id of the row.")
    ra: float = Field(description="Right ascension (ICRS), degrees.")
    dec: float = Field(description="Declination (ICRS), degrees.")
    distance_arcsec: float = Field(description="Angular distance from the cone centre, arcsec.")

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> CatalogConeRow:
        return cls.model_validate({**row, "id": str(row["id"])})


class ConeOut(BaseModel):
    """A cone search answer: rows nearest first."""

    rows: list[ConeRow] | list[CatalogConeRow]
    truncated: bool = Field(False, description="True when the cone holds more rows than "
                            "`limit`: the rows are its nearest `limit`.")


class CatalogMatches(BaseModel):
    """The rows of one reference catalog near an object, nearest first (empty: none)."""

    catalog: str
    rows: list[CatalogConeRow]
    truncated: bool = Field(False, description="True when more rows lie within the radius "
                            "than `limit`: the rows are the nearest `limit`.")


class CrossMatchesOut(BaseModel):
    """An object's neighbours in the reference catalogs."""

    object_id: str
    ra: float = Field(description="The object's position (ICRS), degrees: the cone centre.")
    dec: float
    radius_arcsec: float
    matches: list[CatalogMatches] = Field(
        description="One entry per catalog searched, in the order asked (default: every "
                    "loaded reference catalog, by name).")


class CatalogOut(BaseModel):
    """A catalog a cone search can read."""

    name: str
    kind: str = Field(description="'alert archive objects' or 'reference catalog'.")
    rows: int | None = None
    version: int | None = Field(None, description="Load version (reference catalogs).")
    loaded_at: str | None = None
    columns: list[list[str]] | None = Field(None, description="[name, type] pairs.")
    holds: str | None = Field(
        None, description="What a reference catalog holds: star, galaxy, qso or generic "
                          "(decides how an alert near one of its rows is read).")
    shape: dict[str, str | None] | None = Field(
        None, description="Where each row's ellipse is: stored columns of the major and minor "
                          "axes and the position angle (degrees east of north), their unit, "
                          "and whether they are diameters or radii; null without shapes.")
    motion: dict[str, str | float] | None = Field(
        None, description="Where each row's proper motion is (stored columns pmra, pmdec, "
                          "mas/yr) and the Julian epoch of the positions; null without.")
    overlap_arcmin: float | None = Field(
        None, description="The catalog's overlap radius: the farthest a match can be found.")


class CatalogsOut(BaseModel):
    """Every catalog of the archive."""

    catalogs: list[CatalogOut]


class StatusOut(BaseModel):
    """The backend in use and the size of the archive."""

    backend: str = Field(description="'embedded' (SQLite) or 'services' (Cassandra + MariaDB).")
    version: str = Field(description="Lanner version.")
    catalog: dict[str, int] = Field(description="Rows per table of the object catalog.")
    lightcurves: dict[str, int] = Field(description="Rows per table of the light-curve archive.")
