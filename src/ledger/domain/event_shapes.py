"""Building an aggregate's new events without the dataclass `__init__` on the hot path.

The library's `trigger_event` builds each event with its frozen dataclass `__init__`, which sets
every field through `object.__setattr__`: about 1.3 us an event, a tenth of applying a payment.
The mapper already reads stored events back by filling `__dict__` (`OrjsonMapper`); an event
built the same way is the same object (equal, same fields). What the `__init__` checked, that
the fields given are exactly the class's, is checked here against each class's field names, and
the library's once-per-class check of the explicit topic is done once per class.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from eventsourcing.domain import CanMutateAggregate, _check_explicit_topic_is_registered


@dataclass(frozen=True, slots=True)
class EventShape:
    """An event class's fields, the defaults of those that have one, and whether its `mutate`
    is the library's own (which checks the event against the aggregate, then `apply`s it)."""

    fields: frozenset[str]
    defaults: dict[str, Any]
    plain_mutate: bool = True


_SHAPES: dict[type[Any], EventShape | None] = {}


def event_shape(event_class: type[Any]) -> EventShape | None:
    """The class's shape, or None where only its `__init__` can build it (a default factory)."""
    try:
        return _SHAPES[event_class]
    except KeyError:
        pass
    _check_explicit_topic_is_registered(event_class)
    fields = dataclasses.fields(event_class)
    shape = None
    if all(field.default_factory is dataclasses.MISSING for field in fields):
        shape = EventShape(
            frozenset(field.name for field in fields),
            {
                field.name: field.default
                for field in fields
                if field.default is not dataclasses.MISSING
            },
            getattr(event_class, "mutate", None) is CanMutateAggregate.mutate,
        )
    _SHAPES[event_class] = shape
    return shape


def build_event(event_class: type[Any], shape: EventShape, values: dict[str, Any]) -> Any:
    """An event of `event_class` holding `values` (taken, not copied), which must name exactly
    the class's fields (those with a default may be left out)."""
    if shape.defaults:
        values = {**shape.defaults, **values}
    if values.keys() != shape.fields:
        missing = sorted(shape.fields - values.keys())
        unexpected = sorted(values.keys() - shape.fields)
        raise TypeError(
            f"Can't construct event {event_class}: missing {missing}, unexpected {unexpected}"
        )
    event = object.__new__(event_class)
    object.__setattr__(event, "__dict__", values)
    return event
