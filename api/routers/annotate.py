"""``/api/v1/objects/{id}/annotations``: classifications of objects by annotators.

An annotator is a user whose token an admin gave the ``annotator`` role (``lanner tokens issue
NAME --role annotator``). It posts a class, an optional score and optional JSON for an object;
each post is a new version of its annotation of that object. Annotations are public, like the
objects they describe, and filters can use each annotator's newest (docs/filters.md). A post
is also published on ``internal.annotations``, so the filters stage runs the filters that use
annotations on the object's newest alert again.
"""

from __future__ import annotations

import time
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException
from pydantic import BaseModel, Field

from api.auth import Authenticated
from api.dependencies import LazyStores, get_stores
from api.errors import NOT_FOUND, UNAVAILABLE
from api.models import AnnotationOut, ErrorOut
from broker.exceptions import NotFoundError
from broker.storage.annotations import MAX_CLASS, Annotation
from broker.streaming import lanner_schemas

router = APIRouter(prefix="/api/v1/objects", tags=["annotations"])
Stores = Annotated[LazyStores, Depends(get_stores)]


class AnnotationIn(BaseModel):
    class_: str = Field(alias="class", min_length=1, max_length=MAX_CLASS,
                        description="The class you give the object.")
    score: float | None = Field(None, allow_inf_nan=False,
                                description="Your score or probability for it.")
    data: Any = Field(None, description="Anything else, as JSON (at most 16,384 characters).")


def annotation_out(found: Annotation) -> AnnotationOut:
    return AnnotationOut(annotation_id=found.annotation_id, annotator=found.annotator,
                         version=found.version, class_=found.cls, score=found.score,
                         data=found.data, created_at=found.created_at)


@router.post("/{object_id}/annotations", response_model=AnnotationOut, status_code=201,
             summary="Annotate an object",
             description="Needs a token with the annotator role. Each post is a new version "
             "of your annotation of the object.",
             responses={**NOT_FOUND, **UNAVAILABLE,
                        403: {"model": ErrorOut, "description": "The token is no annotator's."},
                        422: {"model": ErrorOut, "description": "A bad class, score or data."}})
def annotate(object_id: str, body: AnnotationIn, caller: Authenticated,
             stores: Stores) -> AnnotationOut:
    if caller.user is None or caller.user.role != "annotator":
        raise HTTPException(status_code=403, detail="this needs a token with the annotator "
                            "role (an admin gives one: lanner tokens issue NAME --role "
                            "annotator)")
    if stores.catalog.get_object(object_id) is None:
        raise NotFoundError(f"no object {object_id}")
    try:
        found = stores.annotations.add(object_id, caller.user.name, body.class_, body.score,
                                       body.data)
    except ValueError as exc:
        raise HTTPException(status_code=422, detail=str(exc)) from None
    publisher = stores.publisher()
    publisher.publish(stores.settings.topic_annotations, lanner_schemas.encode("annotation", {
        "annotation_id": found.annotation_id, "object_id": object_id,
        "annotator": found.annotator, "version": found.version, "class": found.cls,
        "score": found.score, "created_ms": int(time.time() * 1000)}),
        key=object_id.encode())
    publisher.flush(30.0)
    return annotation_out(found)


@router.get("/{object_id}/annotations", response_model=list[AnnotationOut],
            summary="An object's annotations",
            description="Every version of every annotator's annotation, by annotator then "
            "version.", responses={**UNAVAILABLE})
def list_annotations(object_id: str, stores: Stores) -> list[AnnotationOut]:
    return [annotation_out(a) for a in stores.annotations.of(object_id)]
