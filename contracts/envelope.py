"""CloudEvents 1.0 envelope, structured JSON mode: one JSON object per Kafka message value."""

import functools
from typing import Annotated, Any, Final, Generic, Literal, TypeVar, cast

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, create_model

from ledgerflow.contracts.fields import Timestamp

SPECVERSION: Final = "1.0"
CONTENT_TYPE: Final = "application/cloudevents+json"
DATA_CONTENT_TYPE: Final = "application/json"

DataT = TypeVar("DataT")

# Bounds on envelope attributes: generous for any id scheme (UUIDs, ULIDs, prefixed ids) and any
# URI-reference a producer would use as `source`, while keeping a hostile value small.
ID_MAX_CHARS: Final = 256
SOURCE_MAX_CHARS: Final = 1024
TYPE_MAX_CHARS: Final = 256
# RFC 6838 limits a media type name to 127 characters per part; parameters may follow.
DATACONTENTTYPE_MAX_CHARS: Final = 256

EventId = Annotated[str, StringConstraints(min_length=1, max_length=ID_MAX_CHARS)]


class Envelope(BaseModel, Generic[DataT]):
    """A CloudEvents 1.0 event in structured JSON mode; `data` is the message itself."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    specversion: Literal["1.0"] = Field(description="CloudEvents version, always 1.0.")
    id: EventId = Field(description="Identifies this message; a redelivered copy keeps it.")
    source: Annotated[str, StringConstraints(min_length=1, max_length=SOURCE_MAX_CHARS)] = Field(
        description="URI-reference of the producer, e.g. /api/p2p."
    )
    type: Annotated[str, StringConstraints(min_length=1, max_length=TYPE_MAX_CHARS)] = Field(
        description="The message type: the unprefixed topic name."
    )
    time: Timestamp | None = Field(default=None, description="When it happened (RFC 3339).")
    datacontenttype: (
        Annotated[str, StringConstraints(min_length=1, max_length=DATACONTENTTYPE_MAX_CHARS)] | None
    ) = DATA_CONTENT_TYPE
    causationid: EventId | None = Field(
        default=None, description="On a result event: the `id` of the command that caused it."
    )
    correlationid: EventId | None = Field(
        default=None,
        description="Copied from the command, or the command's `id` when it had none.",
    )
    data: DataT


def _class_name(type_name: str) -> str:
    words = type_name.replace("-", ".").replace("_", ".").split(".")
    return "".join(word.capitalize() for word in words) + "V1"


@functools.cache
def typed_envelope(type_name: str, data_model: type[BaseModel]) -> type[Envelope[Any]]:
    """The envelope of one message type: `type` must equal `type_name`, `data` is `data_model`.

    Built once per type and cached; its JSON Schema is the published schema of that type.
    """
    # Literal and the subscript take runtime values here, which a static checker cannot follow.
    literal_type = cast("Any", Literal)[type_name]
    base = cast("Any", Envelope)[data_model]
    model = create_model(
        _class_name(type_name),
        __base__=base,
        __doc__=f"A `{type_name}` message: CloudEvents 1.0 envelope with its data.",
        type=(literal_type, Field(description="The message type: the unprefixed topic name.")),
    )
    return cast("type[Envelope[Any]]", model)
