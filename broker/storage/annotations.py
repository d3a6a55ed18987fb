"""Annotations of objects by authorised classifiers, on shard 0 of the catalog's shard set.

An annotator (a user whose token has the ``annotator`` role) posts a class, an optional score
and optional free JSON for an object; each post is a new version of that annotator's
annotation of the object, kept with its time. Annotations are public, like the objects they
describe. Filters read the newest version of each annotator's annotation
(``annotation_class('name')``, docs/filters.md).
"""

from __future__ import annotations

import json
import math
import secrets
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from broker.storage import schema
from broker.storage.dialect import column_list, q
from broker.storage.shard0 import Shard0Tables, utc

_COLUMNS = schema.columns("annotations")
MAX_CLASS = 64
#: Largest JSON document an annotation carries, in characters.
MAX_DATA = 16_384


@dataclass(frozen=True, slots=True)
class Annotation:
    annotation_id: int
    object_id: str
    annotator: str
    version: int
    cls: str
    score: float | None
    data: Any
    created_at: datetime

    def as_dict(self) -> dict[str, Any]:
        return {"annotation_id": self.annotation_id, "object_id": self.object_id,
                "annotator": self.annotator, "version": self.version, "class": self.cls,
                "score": self.score, "data": self.data, "created_at": self.created_at}


def _annotation(row: tuple) -> Annotation:
    v = dict(zip(_COLUMNS, row, strict=True))
    return Annotation(int(v["annotation_id"]), v["object_id"], v["annotator"],
                      int(v["version"]), v["class"],
                      None if v["score"] is None else float(v["score"]),
                      None if v["data"] is None else json.loads(v["data"]),
                      utc(v["created_at"]))


def check(cls: str, score: float | None, data: Any) -> str | None:
    """Refuse (ValueError) what an annotation may not hold; the data as JSON text."""
    if not isinstance(cls, str) or not 1 <= len(cls) <= MAX_CLASS or not cls.isprintable():
        msg = f"a class is 1 to {MAX_CLASS} printable characters"
        raise ValueError(msg)
    if score is not None and not math.isfinite(score):
        msg = "a score is a finite number"
        raise ValueError(msg)
    if data is None:
        return None
    text = json.dumps(data, separators=(",", ":"), allow_nan=False)
    if len(text) > MAX_DATA:
        msg = f"the data is {len(text):,} characters of JSON; at most {MAX_DATA:,}"
        raise ValueError(msg)
    return text


class AnnotationStore(Shard0Tables):
    """Annotations over a shard set (table on shard 0)."""

    TABLES = ("annotations",)

    def add(self, object_id: str, annotator: str, cls: str, score: float | None = None,
            data: Any = None) -> Annotation:
        """Store the annotator's next version of its annotation of the object."""
        text = check(cls, score, data)
        annotation_id = secrets.randbits(53) or 1
        now = self._now()

        def work(cursor: Any) -> None:
            cursor.execute(f"SELECT MAX(version) FROM annotations WHERE object_id = %s AND "
                           f"annotator = %s{self.dialect.for_update}", [object_id, annotator])
            row = cursor.fetchone()
            version = 1 + (int(row[0]) if row and row[0] is not None else 0)
            cursor.execute(self.dialect.insert_ignore("annotations", _COLUMNS),
                           [annotation_id, object_id, annotator, version, cls, score, text, now])

        self._run(work)
        return self.get(annotation_id)

    def get(self, annotation_id: int) -> Annotation:
        def work(cursor: Any) -> tuple | None:
            cursor.execute(f"SELECT {column_list(_COLUMNS)} FROM annotations "
                           "WHERE annotation_id = %s", [annotation_id])
            return cursor.fetchone()

        row = self._run(work, write=False)
        assert row is not None
        return _annotation(row)

    def of(self, object_id: str) -> list[Annotation]:
        """Every annotation of an object, by annotator then version."""
        def work(cursor: Any) -> list[tuple]:
            cursor.execute(f"SELECT {column_list(_COLUMNS)} FROM annotations WHERE object_id = "
                           "%s ORDER BY annotator, version", [object_id])
            return list(cursor.fetchall())

        return [_annotation(r) for r in self._run(work, write=False)]

    def newest(self, object_ids: Iterable[str]) -> dict[str, dict[str, Annotation]]:
        """The newest annotation of each annotator of these objects: object → annotator →
        annotation."""
        ids = sorted(set(object_ids))
        out: dict[str, dict[str, Annotation]] = {}
        for start in range(0, len(ids), 1000):
            part = ids[start:start + 1000]

            def work(cursor: Any, part: list[str] = part) -> list[tuple]:
                cursor.execute(
                    f"SELECT {', '.join(f'a.{q(c)}' for c in _COLUMNS)} FROM annotations a JOIN "
                    "(SELECT object_id, annotator, MAX(version) AS v FROM annotations WHERE "
                    f"object_id IN ({', '.join(['%s'] * len(part))}) GROUP BY object_id, "
                    "annotator) n ON n.object_id = a.object_id AND n.annotator = a.annotator "
                    "AND n.v = a.version", part)
                return list(cursor.fetchall())

            for row in self._run(work, write=False):
                found = _annotation(row)
                out.setdefault(found.object_id, {})[found.annotator] = found
        return out

    def annotators(self) -> frozenset[str]:
        """Everyone who has annotated something (the names filters may use)."""
        def work(cursor: Any) -> list[tuple]:
            cursor.execute("SELECT DISTINCT annotator FROM annotations")
            return list(cursor.fetchall())

        return frozenset(r[0] for r in self._run(work, write=False))
