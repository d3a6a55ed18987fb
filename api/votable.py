"""VOTable answers for the IVOA endpoints (Simple Cone Search now, TAP later).

Small results (a cone) are written with astropy.io.votable; errors follow the DAL rule of a
VOTable holding ``<INFO name="Error" value="...">`` as a child of the root element.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from astropy.io.votable.tree import Field, Info, Resource, TableElement, VOTableFile

MEDIA_TYPE = "text/xml;content=x-votable"


@dataclass(frozen=True, slots=True)
class Column:
    """One VOTable field: name, VOTable datatype, UCD (1.03 style for SCS), unit, description."""

    name: str
    datatype: str
    ucd: str | None = None
    unit: str | None = None
    description: str = ""
    arraysize: str | None = None


def table(columns: Sequence[Column], rows: Sequence[dict], *, name: str,
          description: str = "", overflow: bool = False) -> bytes:
    """A VOTable (TABLEDATA) with one table of ``rows`` (dicts keyed by column name).

    The results resource carries ``<INFO name="QUERY_STATUS">``: ``OK``, or ``OVERFLOW`` when
    ``overflow`` says the rows were cut at the service's limit (DALI; pyvo warns on it).
    """
    votable = VOTableFile()
    resource = Resource(type="results")
    resource.infos.append(Info(name="QUERY_STATUS", value="OVERFLOW" if overflow else "OK"))
    votable.resources.append(resource)
    element = TableElement(votable, name=name)
    if description:
        element.description = description
    resource.tables.append(element)
    for column in columns:
        element.fields.append(Field(
            votable, name=column.name, datatype=column.datatype, ucd=column.ucd,
            unit=column.unit, arraysize=column.arraysize or ("*" if column.datatype == "char"
                                                             else None),
        ))
        if column.description:
            element.fields[-1].description = column.description
    element.create_arrays(len(rows))
    for i, row in enumerate(rows):
        values = []
        for column in columns:
            value = row.get(column.name)
            if value is None:
                value = "" if column.datatype == "char" else _null(column.datatype)
            values.append(value)
        element.array[i] = tuple(values)
        for j, column in enumerate(columns):
            if row.get(column.name) is None:
                element.array.mask[i][j] = True
    return serialise(votable)


def serialise(votable: VOTableFile) -> bytes:
    """The document's bytes, TABLEDATA written by astropy's Python writer.

    astropy's C TABLEDATA writer (8.0.x) writes one byte past its row buffer (astropy issue
    #20419): the heap is corrupted silently, and the process dies later, at a random place.
    The Python writer is slower, which matters little for a cone's or a backfill's rows.
    """
    buffer = io.BytesIO()
    votable.to_xml(buffer, tabledata_format="tabledata", _debug_python_based_parser=True)
    return buffer.getvalue()


def _null(datatype: str) -> object:
    if datatype in ("double", "float"):
        return np.nan
    if datatype == "boolean":
        return False
    return 0


def error(message: str) -> bytes:
    """A DAL error document: ``<INFO name="Error" value="message"/>`` under the root."""
    votable = VOTableFile()
    votable.infos.append(Info(name="Error", value=message))
    resource = Resource(type="results")
    resource.infos.append(Info(name="QUERY_STATUS", value="ERROR"))
    votable.resources.append(resource)
    return serialise(votable)
