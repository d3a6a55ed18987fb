"""A TAP answer as bytes, in the format the caller asked for: a VOTable (BINARY2, the default,
or TABLEDATA) by `broker.votable`, VOParquet by `broker.voparquet`, CSV or TSV by pyarrow;
and DALI's error document. Shared by
``/tap/sync``, which streams the bytes, and the asynchronous jobs, which write them to a file.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from xml.sax.saxutils import escape

import pyarrow as pa
import pyarrow.csv as pacsv

from broker.tap.execute import Answer
from broker.voparquet import MEDIA_TYPE, voparquet
from broker.votable import binary2, tabledata

VOTABLE = "application/x-votable+xml"
#: RESPONSEFORMAT values (and their MIME types) → writer name.
FORMATS = {"votable": "binary2", VOTABLE: "binary2", "text/xml": "binary2",
           f"{VOTABLE};serialization=binary2": "binary2",
           f"{VOTABLE};serialization=tabledata": "tabledata", "votable/td": "tabledata",
           "csv": "csv", "text/csv": "csv", "text/csv;header=present": "csv",
           "tsv": "tsv", "text/tab-separated-values": "tsv",
           "parquet": "voparquet", MEDIA_TYPE: "voparquet"}
#: Each writer's media type.
MEDIA = {"binary2": VOTABLE, "tabledata": VOTABLE, "csv": "text/csv;header=present",
         "tsv": "text/tab-separated-values", "voparquet": MEDIA_TYPE}
#: The formats TAPRegExt declares: MIME type and short names.
DECLARED = ((f"{VOTABLE};serialization=binary2", ("votable",)),
            (f"{VOTABLE};serialization=tabledata", ("votable/td",)),
            ("text/csv;header=present", ("csv",)),
            ("text/tab-separated-values", ("tsv",)),
            (MEDIA_TYPE, ("parquet",)))


class FormatError(ValueError):
    """A RESPONSEFORMAT the service does not write."""


def writer_for(wanted: str) -> str:
    """The writer of a RESPONSEFORMAT value (case and spaces aside); `FormatError` if none."""
    writer = FORMATS.get(wanted.strip().lower().replace(" ", ""))
    if writer is None:
        msg = (f"RESPONSEFORMAT {wanted!r} is not one of votable, csv, tsv, parquet "
               f"(or {', '.join(sorted(k for k in FORMATS if '/' in k))})")
        raise FormatError(msg)
    return writer


def encode(answer: Answer, writer: str) -> Iterator[bytes]:
    """The answer's bytes, a block at a time: the VOTable writers never hold the whole table's
    text; CSV and TSV are written whole (pyarrow's writer takes a table)."""
    status = [("QUERY_STATUS", "OK")]
    trailer = [("QUERY_STATUS", "OVERFLOW")] if answer.overflow else []
    batches = answer.table.to_batches(max_chunksize=65_536)
    if writer == "binary2":
        yield from binary2(answer.fields, batches, infos=status, trailer=trailer, report=True)
    elif writer == "tabledata":
        yield from tabledata(answer.fields, batches, infos=status, trailer=trailer,
                             report=True)
    elif writer == "voparquet":
        yield from voparquet(answer.fields, batches, infos=status, trailer=trailer)
    else:
        buffer = io.BytesIO()
        options = pacsv.WriteOptions(delimiter="\t" if writer == "tsv" else ",")
        table = answer.table.rename_columns([f.name for f in answer.fields])
        pacsv.write_csv(table if table.num_columns else pa.table({}), buffer, options)
        yield buffer.getvalue()


def error_document(message: str) -> str:
    """DALI's error VOTable: one ``QUERY_STATUS`` INFO, ``ERROR``, holding the message."""
    return ('<?xml version="1.0" encoding="UTF-8"?>\n'
            '<VOTABLE version="1.4" xmlns="http://www.ivoa.net/xml/VOTable/v1.3">\n'
            '<RESOURCE type="results">\n<INFO name="QUERY_STATUS" value="ERROR">'
            f"{escape(message)}</INFO>\n</RESOURCE>\n</VOTABLE>\n")
