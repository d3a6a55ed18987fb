"""``/registry``: a read-only schema registry that speaks Confluent's REST API.

Every Lanner topic carries Avro in the Confluent wire format: a magic byte and a 4-byte schema
id before each record. With this registry, a plain confluent-kafka ``DeserializingConsumer``
with an ``AvroDeserializer`` and a ``SchemaRegistryClient({"url": ".../registry"})`` reads any
Lanner topic without a schema file at hand (docs/filters.md shows one).

It serves Lanner's own schemas (``schemas/avro``, ids ``9FFFMMmm``) and Rubin's alert schemas
(from the installed lsst-alert-packet, ids ``major * 100 + minor``), under the subjects of
both of Confluent's usual naming strategies: ``<topic>-value`` for each Lanner topic (every
``filter.<owner>.<name>-value`` is ``lanner.filtered``), and the family's name
(``lanner.enriched``). It registers nothing: ``POST /subjects/{subject}`` only looks a schema
up. Errors follow the registry's form, ``{"error_code": 40403, "message": ...}``, which the
client turns into its exceptions.
"""

from __future__ import annotations

import json
import re
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse

from api.dependencies import LazyStores, get_stores
from broker.exceptions import UnknownSchemaError
from broker.streaming import lanner_schemas, schemas

router = APIRouter(prefix="/registry", tags=["schema registry"])
Stores = Annotated[LazyStores, Depends(get_stores)]

_FILTER_SUBJECT = re.compile(r"filter\.[a-z][a-z0-9_]{0,31}\.[a-z0-9][a-z0-9_-]{0,63}-value")
_RUBIN = "rubin"


def _missing(code: int, message: str) -> JSONResponse:
    return JSONResponse({"error_code": code, "message": message}, status_code=404)


def _text(schema_id: int) -> str | None:
    for family, versions in lanner_schemas.families().items():
        for version, known in versions.items():
            if known == schema_id:
                return lanner_schemas.schema_text(family.removeprefix("lanner."), version)
    try:
        return schemas.schema_text(schema_id)
    except (UnknownSchemaError, ValueError):
        return None


def _ids_of(family: str) -> list[int]:
    """The schema ids of a family (``lanner.enriched``, or ``rubin``), oldest first."""
    if family == _RUBIN:
        return [v.schema_id for v in schemas.available_versions()]
    return list(lanner_schemas.families().get(family, {}).values())


def _subjects(stores: LazyStores) -> dict[str, str]:
    """Fixed subjects and the family each names."""
    s = stores.factory.settings
    found = {family: family for family in lanner_schemas.families()}
    found.update({f"{s.topic_ingested}-value": "lanner.ingested",
                  f"{s.topic_enriched}-value": "lanner.enriched",
                  f"{s.topic_dr_updates}-value": "lanner.dr_update",
                  f"{s.topic_alerts_lsst}-value": _RUBIN})
    return found


def _family(subject: str, stores: LazyStores) -> str | None:
    if _FILTER_SUBJECT.fullmatch(subject):
        return "lanner.filtered"
    return _subjects(stores).get(subject)


@router.get("/schemas/ids/{schema_id}", summary="A schema by id")
def schema_by_id(schema_id: int) -> Any:
    text = _text(schema_id)
    if text is None:
        return _missing(40403, f"Schema {schema_id} not found")
    return {"schema": text}


@router.get("/schemas/ids/{schema_id}/versions", summary="Where a schema id is used")
def schema_versions(schema_id: int, stores: Stores) -> Any:
    if _text(schema_id) is None:
        return _missing(40403, f"Schema {schema_id} not found")
    used = []
    for subject, family in sorted(_subjects(stores).items()):
        ids = _ids_of(family)
        if schema_id in ids:
            used.append({"subject": subject, "version": ids.index(schema_id) + 1})
    return used


@router.get("/schemas/types", summary="Schema types")
def schema_types() -> list[str]:
    return ["AVRO"]


@router.get("/subjects", summary="Subjects")
def subjects(stores: Stores) -> list[str]:
    return sorted(_subjects(stores))


@router.get("/subjects/{subject}/versions", summary="A subject's versions")
def subject_versions(subject: str, stores: Stores) -> Any:
    family = _family(subject, stores)
    if family is None:
        return _missing(40401, f"Subject '{subject}' not found.")
    return list(range(1, len(_ids_of(family)) + 1))


def _version(subject: str, family: str, version: int) -> dict[str, Any]:
    schema_id = _ids_of(family)[version - 1]
    return {"subject": subject, "id": schema_id, "version": version,
            "schema": _text(schema_id)}


@router.get("/subjects/{subject}/versions/{version}", summary="One version of a subject")
def subject_version(subject: str, version: str, stores: Stores) -> Any:
    family = _family(subject, stores)
    if family is None:
        return _missing(40401, f"Subject '{subject}' not found.")
    count = len(_ids_of(family))
    number = count if version in ("latest", "-1") else int(version) if version.isdigit() else 0
    if not 1 <= number <= count:
        return _missing(40402, f"Version {version} not found.")
    return _version(subject, family, number)


@router.post("/subjects/{subject}", summary="Look a schema up under a subject",
             description="Read-only: finds the version of a subject whose schema is the one "
             "given, and registers nothing.")
async def lookup(subject: str, request: Request, stores: Stores) -> Any:
    family = _family(subject, stores)
    if family is None:
        return _missing(40401, f"Subject '{subject}' not found.")
    try:
        given = json.loads((await request.json())["schema"])
    except (ValueError, KeyError, TypeError):
        return JSONResponse({"error_code": 42201, "message": "Invalid schema"}, status_code=422)
    for number, schema_id in enumerate(_ids_of(family), start=1):
        if json.loads(_text(schema_id) or "null") == given:
            return _version(subject, family, number)
    return _missing(40403, "Schema not found")


@router.get("/config", summary="Compatibility")
def config() -> dict[str, str]:
    """Lanner's rule: a minor version only adds fields with defaults (schemas/avro/README.md),
    so a reader of a newer version reads older records: BACKWARD."""
    return {"compatibilityLevel": "BACKWARD"}
