"""A fast JSON mapper for the event store: orjson on the way in, our value types on the way out.

It runs the library's versioning steps, as the library's own `Mapper` does: an event class with
`class_version` N > 1 is stored with `"class_version": N`, and a stored state of an older version
goes through the class's `upcast_vK_vK+1(state)` static methods before it becomes an event.
Upcasters see the stored JSON values (ISO strings, lists of posting dicts). A snapshot's
aggregate state is upcast by the aggregate class's methods when the snapshot is applied
(the library's `Snapshot.mutate`). Topics resolve through the library's registry, which holds
our stable names and the legacy module paths (`ledger.domain.event_names`).
"""

from __future__ import annotations

from datetime import datetime
from functools import lru_cache
from typing import Any
from uuid import UUID

import orjson
from eventsourcing.domain import DomainEventProtocol, Snapshot
from eventsourcing.persistence import Mapper, MapperDeserialisationError, StoredEvent
from eventsourcing.utils import get_topic, resolve_topic

from ledger.domain import event_names
from ledger.domain.postings import Posting

event_names.register_legacy_topics()  # rows stored under module paths resolve to today's classes

_DATETIME_FIELDS = ("timestamp",)
_SNAPSHOT_DATETIME_FIELDS = ("_created_on", "_modified_on")


@lru_cache(maxsize=256)
def _resolve(topic: str) -> type[Any]:
    resolved: type[Any] = resolve_topic(topic)
    return resolved


@lru_cache(maxsize=256)
def _encoding(cls: type[Any]) -> tuple[str, int, int]:
    """A class's stored topic, class version and orjson options (a snapshot's state holds
    dicts keyed by ledger accounts, str enums)."""
    option = orjson.OPT_NON_STR_KEYS if issubclass(cls, Snapshot) else 0
    return get_topic(cls), _class_version(cls), option


def decode_state(state: bytes) -> dict[str, Any]:
    """The stored JSON of an event as plain data (what projections and relays read)."""
    decoded: dict[str, Any] = orjson.loads(state)
    return decoded


def _class_version(cls: type[Any]) -> int:
    version: int = getattr(cls, "class_version", 1)
    return version


def _upcast(cls: type[Any], state: dict[str, Any]) -> None:
    """Bring a stored state up to the class's version, one upcaster at a time (in place)."""
    version = state.pop("class_version", 1)
    target = _class_version(cls)
    while version < target:
        getattr(cls, f"upcast_v{version}_v{version + 1}")(state)
        version += 1


@lru_cache(maxsize=256)
def _topic_version(topic: str) -> int:
    """The current class version of a stored topic's class."""
    return _class_version(_resolve(topic))


def upcast_state(topic: str, decoded: dict[str, Any]) -> dict[str, Any]:
    """A decoded stored state brought up to its class's current version (in place)."""
    if _topic_version(topic) == 1 and "class_version" not in decoded:
        return decoded  # a first version, stored as such: nothing to do (most events)
    _upcast(_resolve(topic), decoded)
    return decoded


def current_state(topic: str, state: bytes) -> dict[str, Any]:
    """A stored event's JSON, upcast to its class's current version (for relays, projections)."""
    return upcast_state(topic, decode_state(state))


class OrjsonMapper(Mapper[UUID]):
    """Stores events as clean JSON; events hold only str, int, tuples of postings and timestamps."""

    def to_stored_event(self, domain_event: DomainEventProtocol[UUID]) -> StoredEvent:
        """Encode a domain event for the store."""
        state = dict(vars(domain_event))
        originator_id = state.pop("originator_id")
        originator_version = state.pop("originator_version")
        topic, class_version, option = _encoding(type(domain_event))
        if class_version > 1:
            state["class_version"] = class_version
        # Filled as the library's frozen dataclass would be, without its __init__ (the ingest
        # encodes every event it stores: a third of a microsecond each).
        stored = object.__new__(StoredEvent)
        object.__setattr__(
            stored,
            "__dict__",
            {
                "originator_id": originator_id,
                "originator_version": originator_version,
                "topic": topic,
                "state": orjson.dumps(state, option=option),
            },
        )
        return stored

    def to_domain_event(self, stored_event: StoredEvent) -> DomainEventProtocol[UUID]:
        """Decode a stored event back into its domain event class."""
        cls = _resolve(stored_event.topic)
        try:
            state = decode_state(stored_event.state)
            _upcast(cls, state)
            for name in _DATETIME_FIELDS:
                state[name] = datetime.fromisoformat(state[name])
            postings = state.get("postings")
            if postings is not None:
                state["postings"] = tuple(Posting(**posting) for posting in postings)
            if issubclass(cls, Snapshot):
                inner = state["state"]
                for name in _SNAPSHOT_DATETIME_FIELDS:
                    if name in inner:
                        inner[name] = datetime.fromisoformat(inner[name])
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError) as error:
            raise MapperDeserialisationError(
                f"cannot decode {stored_event.topic} {stored_event.originator_id}"
                f" v{stored_event.originator_version}: {error}"
            ) from error
        originator_id = stored_event.originator_id
        state["originator_id"] = (
            originator_id if isinstance(originator_id, UUID) else UUID(str(originator_id))
        )
        state["originator_version"] = stored_event.originator_version
        domain_event = object.__new__(cls)
        object.__setattr__(domain_event, "__dict__", state)
        event: DomainEventProtocol[UUID] = domain_event
        return event
