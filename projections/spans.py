"""The projectors' spans (SPEC §12.3): one `projection <name>` consumer span per event, continuing the trace in
the event's stored `traceparent`, and the forwarder's `<stream> publish` producer span per stream entry, whose
context becomes the entry's `metadata.traceparent` (SPEC §8.2) so consumers continue the same trace.

With tracing off both are pass-throughs: the batch and the entries go on unchanged.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from typing import TYPE_CHECKING

import msgspec
from opentelemetry import trace

from pandora_users.observability import tracing
from projections.integration_events import METADATA_KEYS, Entry

if TYPE_CHECKING:
    from projections.runner import Envelope

Published = tuple[int, Entry]


@contextmanager
def consumer_spans(projection: str, batch: Sequence[Envelope]) -> Iterator[Sequence[Envelope]]:
    """Spans around a batch's processing, one per event; the envelopes yielded carry their span's context."""
    if not tracing.enabled():
        yield batch
        return
    with ExitStack() as stack:
        traced = []
        for envelope in batch:
            event = envelope.event
            parent = tracing.extract({"traceparent": event.metadata.get("traceparent", "")})
            attributes = {
                "pandora.projection": projection,
                "pandora.position": envelope.position,
                "pandora.event_type": type(event).EVENT_TYPE or type(event).TOPIC,
            }
            span = stack.enter_context(
                tracing.span(
                    f"projection {projection}",
                    kind=tracing.CONSUMER,
                    parent=parent,
                    attributes=attributes,
                    current=False,
                )
            )
            traced.append(dataclasses.replace(envelope, trace=trace.set_span_in_context(span, parent)))
        yield traced


@contextmanager
def publish_spans(stream: str, batch: Sequence[Envelope], entries: Sequence[Published]) -> Iterator[list[Published]]:
    """Spans around the XADD of `entries`, children of their events' projection spans; the entries yielded
    carry the publish span's context as `metadata.traceparent`."""
    if not tracing.enabled():
        yield list(entries)
        return
    parents = {envelope.position: envelope.trace for envelope in batch}
    with ExitStack() as stack:
        traced = []
        for position, entry in entries:
            attributes = {
                "messaging.system": "redis",
                "messaging.destination.name": stream,
                "messaging.operation.type": "send",
                "messaging.message.id": f"{position}-0",
            }
            span = stack.enter_context(
                tracing.span(
                    f"{stream} publish",
                    kind=tracing.PRODUCER,
                    parent=parents.get(position),
                    attributes=attributes,
                    current=False,
                )
            )
            traced.append((position, with_traceparent(entry, tracing.traceparent(span.get_span_context()))))
        yield traced


def with_traceparent(entry: Entry, traceparent: str | None) -> Entry:
    """The entry with `metadata.traceparent` replaced (keys stay in the contract's order)."""
    if traceparent is None:
        return entry
    metadata = {**msgspec.json.decode(entry.metadata), "traceparent": traceparent}
    ordered = {key: metadata[key] for key in METADATA_KEYS if key in metadata}
    return msgspec.structs.replace(entry, metadata=msgspec.json.encode(ordered).decode())
