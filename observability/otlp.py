"""Spans to OTLP protobuf bytes, written straight in the wire format.

The OTLP exporter's own encoder builds a protobuf message object per span, attribute and
value before serialising them, which costs about as much as making the span did. This writes
the same `ExportTraceServiceRequest` bytes directly (the tests decode them with the official
message classes and compare with the official encoder), and only the bytes are made.

Wire format: each field is a key (field number << 3 | wire type) then a varint, 8 bytes
(fixed64, double), or a varint length and that many bytes (strings, bytes, sub-messages).
Default values (0, "", empty) are left out, as protobuf does.
"""

from __future__ import annotations

import functools
import struct
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExportResult
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import Link, SpanContext, SpanKind, TraceState

_VARINT, _FIXED64, _BYTES, _FIXED32 = 0, 1, 2, 5

# OTLP's SpanKind numbers SPAN_KIND_INTERNAL as 1, the API's SpanKind as 0.
_KINDS = {kind: kind.value + 1 for kind in SpanKind}
_HAS_IS_REMOTE, _IS_REMOTE = 0x100, 0x200  # SpanFlags
_BYTE = [bytes((value,)) for value in range(0x80)]


def _varint(value: int) -> bytes:
    if 0 <= value < 0x80:  # most lengths, counts and keys
        return _BYTE[value]
    value &= 0xFFFFFFFFFFFFFFFF  # negative int64s are ten bytes, as two's complement
    out = bytearray()
    while value > 0x7F:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _key(field: int, wire_type: int) -> bytes:
    return _varint(field << 3 | wire_type)


def _field(field: int, payload: bytes) -> bytes:
    """A length-delimited field (bytes, string or message)."""
    return _key(field, _BYTES) + _varint(len(payload)) + payload


def _text(field: int, value: str | None) -> bytes:
    return _field(field, value.encode()) if value else b""


def _count(field: int, value: int) -> bytes:
    return _key(field, _VARINT) + _varint(value) if value else b""


def _nanos(field: int, value: int | None) -> bytes:
    return _key(field, _FIXED64) + struct.pack("<Q", value) if value else b""


def _any_value(value: Any) -> bytes:
    """An `AnyValue` (attribute values are str, bool, int, float or sequences of them; events
    may carry bytes, mappings and None too)."""
    if value is None:
        return b""
    if isinstance(value, str):
        return _field(1, value.encode())
    if isinstance(value, bool):
        return _key(2, _VARINT) + _varint(int(value))
    if isinstance(value, int):
        return _key(3, _VARINT) + _varint(value)
    if isinstance(value, float):
        return _key(4, _FIXED64) + struct.pack("<d", value)
    if isinstance(value, bytes):
        return _field(7, value)
    if isinstance(value, Sequence):
        return _field(5, b"".join(_field(1, _any_value(item)) for item in value))
    if isinstance(value, Mapping):
        return _field(6, _attributes(1, {str(key): item for key, item in value.items()}))
    raise TypeError(f"not an attribute value: {type(value).__name__}")


def _attributes(field: int, attributes: Mapping[str, Any] | None) -> bytes:
    if not attributes:
        return b""
    return b"".join(
        _field(field, _string_pair(key, value) if type(value) is str else _pair(key, value))
        for key, value in attributes.items()
    )


def _pair(key: str, value: Any) -> bytes:
    """A `KeyValue`."""
    return _text(1, key) + _field(2, _any_value(value))


# Most attribute values are strings that recur (methods, routes, statements, commands).
_string_pair = functools.lru_cache(maxsize=4096)(_pair)
_name = functools.lru_cache(maxsize=1024)(functools.partial(_text, 5))


def _trace_state(field: int, state: TraceState | None) -> bytes:
    return _text(field, state.to_header()) if state else b""


def _flags(parent: SpanContext | None) -> int:
    return _HAS_IS_REMOTE | (_IS_REMOTE if parent is not None and parent.is_remote else 0)


def _link(link: Link) -> bytes:
    context = link.context
    return (
        _field(1, context.trace_id.to_bytes(16, "big"))
        + _field(2, context.span_id.to_bytes(8, "big"))
        + _attributes(4, link.attributes)
        + _count(5, link.dropped_attributes)
        + _key(6, _FIXED32)
        + struct.pack("<I", _flags(context))
    )


_TRACE_ID, _SPAN_ID, _PARENT_ID = b"\x0a\x10", b"\x12\x08", b"\x22\x08"  # fields 1, 2, 4
_TIMES = struct.Struct("<BQBQ")  # fields 7 and 8, fixed64
_SPAN_KINDS = {kind: _count(6, number) for kind, number in _KINDS.items()}
_SPAN_FLAGS = {
    remote: _key(16, _FIXED32) + struct.pack("<I", _HAS_IS_REMOTE | (_IS_REMOTE if remote else 0))
    for remote in (False, True)
}
_UNSET = _field(15, b"")


def encode_span(span: ReadableSpan) -> bytes:
    """One `Span` message."""
    context = span.get_span_context()
    assert context is not None  # an SDK span always has one
    parent = span.parent
    status = span.status
    parts = [
        _TRACE_ID,
        context.trace_id.to_bytes(16, "big"),
        _SPAN_ID,
        context.span_id.to_bytes(8, "big"),
    ]
    if context.trace_state:
        parts.append(_text(3, context.trace_state.to_header()))
    if parent is not None:
        parts += (_PARENT_ID, parent.span_id.to_bytes(8, "big"))
    parts += (
        _name(span.name),
        _SPAN_KINDS[span.kind],
        _TIMES.pack(0x39, span.start_time or 0, 0x41, span.end_time or 0),
        _attributes(9, span.attributes),
    )
    if span.events or span.links or span.dropped_attributes:
        parts.append(_rare_parts(span))
    if status.status_code.value or status.description:
        parts.append(_field(15, _text(2, status.description) + _count(3, status.status_code.value)))
    else:
        parts.append(_UNSET)
    parts.append(_SPAN_FLAGS[parent is not None and parent.is_remote])
    return b"".join(parts)


def _rare_parts(span: ReadableSpan) -> bytes:
    """Dropped counts, events and links: few spans have them."""
    return b"".join(
        (
            _count(10, span.dropped_attributes),
            *(
                _field(
                    11,
                    _nanos(1, event.timestamp)
                    + _text(2, event.name)
                    + _attributes(3, event.attributes)
                    + _count(4, event.dropped_attributes),
                )
                for event in span.events
            ),
            _count(12, span.dropped_events),
            *(_field(13, _link(link)) for link in span.links),
            _count(14, span.dropped_links),
        )
    )


def _scope(scope: InstrumentationScope | None) -> bytes:
    if scope is None:
        return b""
    return _field(
        1, _text(1, scope.name) + _text(2, scope.version) + _attributes(3, scope.attributes)
    )


def encode_spans(spans: Iterable[ReadableSpan]) -> bytes:
    """An `ExportTraceServiceRequest`: the spans grouped by resource, then by scope."""
    grouped: dict[Resource, dict[InstrumentationScope | None, list[bytes]]] = {}
    for each in spans:
        by_scope = grouped.setdefault(each.resource, {})
        by_scope.setdefault(each.instrumentation_scope or None, []).append(encode_span(each))
    return b"".join(
        _field(
            1,
            _field(1, _attributes(1, resource.attributes))
            + b"".join(
                _field(
                    2,
                    _scope(scope)
                    + b"".join(_field(2, encoded) for encoded in encoded_spans)
                    + _text(3, scope.schema_url if scope else None),
                )
                for scope, encoded_spans in by_scope.items()
            )
            + _text(3, resource.schema_url),
        )
        for resource, by_scope in grouped.items()
    )


class Exporter(OTLPSpanExporter):
    """The SDK's OTLP/HTTP span exporter (its configuration from the environment, retries,
    compression and TLS), sending the bytes `encode_spans` makes.

    It reaches into the exporter for its HTTP client (`_client`, whose `export` takes the
    serialised request); an exporter version without one encodes its own way."""

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        client = getattr(self, "_client", None)
        if client is None or self._shutdown:
            return super().export(spans)
        sent = client.export(encode_spans(spans))
        return SpanExportResult.SUCCESS if sent.success else SpanExportResult.FAILURE
