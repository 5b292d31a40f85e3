"""The bridge's wire format: msgpack maps, versioned, sequenced, timestamped. No pickle.

Every message is one msgpack map::

    {"v": VERSION, "type": str, "seq": int, "t": float, "token": str (optional), "body": map}

``seq`` increases by at least one per message from each side (a replayed or reordered message is
rejected); ``t`` is the sender's monotonic clock (the client estimates the clock offset from it).
Replies carry ``ack``, the ``seq`` they answer. Arrays travel as ``{"__nd__": dtype, "shape":
[...], "data": bytes}`` for a fixed set of dtypes only, and a message longer than the size limit
is refused before it is unpacked.
"""

from __future__ import annotations

import math
from typing import Any

import msgpack
import numpy as np

__all__ = ["MAX_BYTES", "VERSION", "ProtocolError", "decode", "encode"]

VERSION = 1
MAX_BYTES = 4 * 1024 * 1024  # default size limit of one message
DTYPES = frozenset({"float32", "float64", "int32", "int64", "uint8", "bool"})
REQUESTS = frozenset(
    {"hello", "observation", "send", "stop", "start_episode", "heartbeat", "bye"}
)  # what a client may ask


class ProtocolError(ValueError):
    """A message that is malformed, oversized, of the wrong version, or out of order."""


def _pack_value(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        if value.dtype.name not in DTYPES:
            raise ProtocolError(f"array dtype {value.dtype} cannot be sent")
        return {"__nd__": value.dtype.name, "shape": list(value.shape), "data": value.tobytes()}
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, dict):
        return {str(k): _pack_value(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_pack_value(v) for v in value]
    return value


def _unpack_value(value: Any) -> Any:
    if isinstance(value, dict):
        if "__nd__" in value:
            return _array(value)
        return {k: _unpack_value(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_unpack_value(v) for v in value]
    return value


def _array(value: dict) -> np.ndarray:
    dtype, shape, data = value.get("__nd__"), value.get("shape"), value.get("data")
    if dtype not in DTYPES or not isinstance(data, bytes) or not isinstance(shape, list):
        raise ProtocolError("malformed array")
    if not all(isinstance(n, int) and n >= 0 for n in shape):
        raise ProtocolError("malformed array shape")
    if math.prod(shape) * np.dtype(dtype).itemsize != len(data):
        raise ProtocolError("array data does not match its shape")
    return np.frombuffer(data, dtype=dtype).reshape(shape).copy()


def encode(kind: str, seq: int, t: float, body: dict | None = None, **extra: Any) -> bytes:
    """One message as bytes (``extra``: ``ack``, ``token``)."""
    msg = {"v": VERSION, "type": kind, "seq": int(seq), "t": float(t), "body": body or {}}
    msg.update(extra)
    return msgpack.packb(_pack_value(msg), use_bin_type=True)


def decode(frame: bytes, max_bytes: int = MAX_BYTES) -> dict[str, Any]:
    """The message in ``frame``; ProtocolError for anything not a well-formed message of this
    version within ``max_bytes``."""
    if len(frame) > max_bytes:
        raise ProtocolError(f"message of {len(frame)} bytes exceeds the limit of {max_bytes}")
    try:
        msg = msgpack.unpackb(frame, raw=False, strict_map_key=True)
    except Exception as exc:  # msgpack raises several types for garbage
        raise ProtocolError(f"not a msgpack message ({type(exc).__name__})") from None
    if not isinstance(msg, dict):
        raise ProtocolError("message is not a map")
    if msg.get("v") != VERSION:
        raise ProtocolError(f"protocol version {msg.get('v')!r}, this side speaks {VERSION}")
    kind, seq, t, body = msg.get("type"), msg.get("seq"), msg.get("t"), msg.get("body")
    if not isinstance(kind, str) or not isinstance(seq, int) or isinstance(seq, bool):
        raise ProtocolError("message needs a string 'type' and an integer 'seq'")
    if not isinstance(t, float | int) or not math.isfinite(t) or not isinstance(body, dict):
        raise ProtocolError("message needs a finite 't' and a map 'body'")
    msg["body"] = _unpack_value(body)
    return msg
