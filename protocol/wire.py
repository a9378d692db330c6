"""Wire format: length-prefixed msgpack frames carrying typed, validated records.

Why a declarative schema: every byte on the wire is untrusted, so each message
type states its fields' types, ranges and maximum sizes once, and the single
decoder enforces them. A message class is a frozen dataclass registered under
a type name; `encode_message`/`decode_message` are the only way in and out.

Frame layout (specs/wire.md):

    u32 big-endian payload length | payload
    payload = msgpack array [PROTOCOL_VERSION, type_name, {field: value}]

Datagrams (membership gossip) carry the payload without the length prefix.
"""

from __future__ import annotations

import dataclasses
import struct
import threading
from collections.abc import Callable, Iterator
from typing import Any, ClassVar, TypeVar, dataclass_transform

import msgpack

from .errors import ProtocolError

PROTOCOL_VERSION = 1
DEFAULT_MAX_FRAME = 1024 * 1024  # 1 MiB
_LEN = struct.Struct(">I")

# ---------------------------------------------------------------- field specs


@dataclasses.dataclass(frozen=True)
class Spec:
    """Validation rule for one field; `check` returns the (possibly converted) value."""

    kind: str
    min: int | float | None = None
    max: int | float | None = None
    max_len: int | None = None
    exact_len: int | None = None
    item: Spec | None = None
    key: Spec | None = None
    message: type[Message] | None = None
    choices: tuple[str, ...] | None = None
    optional: bool = False

    def check(self, name: str, value: Any) -> Any:
        # Fast path for the common, valid case (every datagram runs through here);
        # anything unusual falls through to the full checks and their messages.
        k = self.kind
        t = type(value)
        if k == "bytes" and t is bytes:
            n = len(value)
            if (self.exact_len is None or n == self.exact_len) and \
                    (self.max_len is None or n <= self.max_len):
                return value
        elif k == "int" and t is int:
            if (self.min is None or value >= self.min) and (self.max is None or value <= self.max):
                return value
        elif k == "str" and t is str:
            if (self.max_len is None or len(value) <= self.max_len) and \
                    (self.choices is None or value in self.choices) and \
                    (self.exact_len is None or len(value) == self.exact_len):
                return value
        elif k == "bool" and t is bool:
            return value
        elif k == "list" and (t is list or t is tuple):
            # a list of plain bytes (every datagram's gossip): the slow path's per-item
            # check would return each item unchanged
            item = self.item
            if (item is not None and item.kind == "bytes" and item.exact_len is None
                    and (self.max_len is None or len(value) <= self.max_len)):
                limit = item.max_len
                for v in value:
                    if type(v) is not bytes or (limit is not None and len(v) > limit):
                        break
                else:
                    return tuple(value)
        elif value is None and self.optional:
            return None
        return self._check_slow(name, value)

    def _check_slow(self, name: str, value: Any) -> Any:
        if value is None:
            if self.optional:
                return None
            raise ProtocolError(f"field {name!r}: missing")
        k = self.kind
        if k == "int":
            if not isinstance(value, int) or isinstance(value, bool):
                raise ProtocolError(f"field {name!r}: expected int, got {type(value).__name__}")
            if self.min is not None and value < self.min:
                raise ProtocolError(f"field {name!r}: {value} below minimum {self.min}")
            if self.max is not None and value > self.max:
                raise ProtocolError(f"field {name!r}: {value} above maximum {self.max}")
            return value
        if k == "float":
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ProtocolError(f"field {name!r}: expected number, got {type(value).__name__}")
            value = float(value)
            if value != value:
                raise ProtocolError(f"field {name!r}: NaN")
            if self.min is not None and value < self.min:
                raise ProtocolError(f"field {name!r}: {value} below minimum {self.min}")
            if self.max is not None and value > self.max:
                raise ProtocolError(f"field {name!r}: {value} above maximum {self.max}")
            return value
        if k == "bool":
            if not isinstance(value, bool):
                raise ProtocolError(f"field {name!r}: expected bool, got {type(value).__name__}")
            return value
        if k == "bytes":
            if not isinstance(value, (bytes, bytearray)):
                raise ProtocolError(f"field {name!r}: expected bytes, got {type(value).__name__}")
            self._check_len(name, len(value))
            return bytes(value)
        if k == "str":
            if not isinstance(value, str):
                raise ProtocolError(f"field {name!r}: expected str, got {type(value).__name__}")
            self._check_len(name, len(value))
            if self.choices is not None and value not in self.choices:
                raise ProtocolError(f"field {name!r}: {value!r} not one of {list(self.choices)}")
            return value
        if k == "list":
            if not isinstance(value, (list, tuple)):
                raise ProtocolError(f"field {name!r}: expected list, got {type(value).__name__}")
            self._check_len(name, len(value))
            assert self.item is not None
            check = self.item.check
            out: list[Any] = []
            try:
                for v in value:  # hot path (push-pull lists): no per-item name formatting
                    out.append(check(name, v))
            except ProtocolError as err:
                raise ProtocolError(f"{err.reason} (item {len(out)})") from None
            return tuple(out)
        if k == "map":
            if not isinstance(value, dict):
                raise ProtocolError(f"field {name!r}: expected map, got {type(value).__name__}")
            self._check_len(name, len(value))
            assert self.key is not None and self.item is not None
            return {self.key.check(f"{name}.key", kk): self.item.check(f"{name}[{kk!r}]", vv)
                    for kk, vv in value.items()}
        if k == "message":
            assert self.message is not None
            if not isinstance(value, dict):
                raise ProtocolError(f"field {name!r}: expected record, got {type(value).__name__}")
            return self.message.from_fields(value, where=name)
        raise AssertionError(f"unknown spec kind {k}")

    def _check_len(self, name: str, n: int) -> None:
        if self.exact_len is not None and n != self.exact_len:
            raise ProtocolError(f"field {name!r}: length {n}, expected {self.exact_len}")
        if self.max_len is not None and n > self.max_len:
            raise ProtocolError(f"field {name!r}: length {n} exceeds {self.max_len}")

    def dump(self, value: Any) -> Any:
        if value is None:
            return None
        if self.kind == "message":
            return value.to_fields()
        if self.kind == "list":
            assert self.item is not None
            if self.item.kind not in ("message", "list", "map"):
                return list(value)
            return [self.item.dump(v) for v in value]
        if self.kind == "map":
            assert self.item is not None
            return {k: self.item.dump(v) for k, v in value.items()}
        return value


def u(bits: int = 64, optional: bool = False) -> Spec:
    """Unsigned integer of at most `bits` bits."""
    return Spec("int", min=0, max=(1 << bits) - 1, optional=optional)


def i(lo: int, hi: int, optional: bool = False) -> Spec:
    return Spec("int", min=lo, max=hi, optional=optional)


def f(lo: float | None = None, hi: float | None = None, optional: bool = False) -> Spec:
    return Spec("float", min=lo, max=hi, optional=optional)


def b(max_len: int | None = None, exact: int | None = None, optional: bool = False) -> Spec:
    return Spec("bytes", max_len=max_len, exact_len=exact, optional=optional)


def s(max_len: int = 256, choices: tuple[str, ...] | None = None,
      optional: bool = False) -> Spec:
    return Spec("str", max_len=max_len, choices=choices, optional=optional)


def flag(optional: bool = False) -> Spec:
    return Spec("bool", optional=optional)


def seq(item: Spec, max_len: int, optional: bool = False) -> Spec:
    return Spec("list", item=item, max_len=max_len, optional=optional)


def mapping(key: Spec, item: Spec, max_len: int, optional: bool = False) -> Spec:
    return Spec("map", key=key, item=item, max_len=max_len, optional=optional)


def rec(message: type[Message], optional: bool = False) -> Spec:
    return Spec("message", message=message, optional=optional)


_MAX_HEADER = 5  # str32/bin32/array32/map32 header; an encoder need not pick the shortest


def max_encoded_size(spec: Spec) -> int:
    """The most msgpack bytes a value `spec` accepts can take, whatever the encoder.

    Why: an RPC method's body limit (protocol/rpc.py) must admit every body its schema
    allows and little more. Every header is counted at its longest form, every int and
    float at 9 bytes, and a str of n characters at 4n bytes (the schema counts code
    points, UTF-8 takes up to 4 bytes each); a present optional field counts in full.
    """
    k = spec.kind
    if k in ("int", "float"):
        return 9
    if k == "bool":
        return 1
    if k == "str":
        if spec.choices is not None:
            return _MAX_HEADER + max(len(c.encode()) for c in spec.choices)
        n = spec.exact_len if spec.exact_len is not None else spec.max_len
        assert n is not None, "unbounded str field"
        return _MAX_HEADER + 4 * n
    if k == "bytes":
        n = spec.exact_len if spec.exact_len is not None else spec.max_len
        assert n is not None, "unbounded bytes field"
        return _MAX_HEADER + n
    assert spec.max_len is not None or k == "message", f"unbounded {k} field"
    if k == "list":
        assert spec.item is not None and spec.max_len is not None
        return _MAX_HEADER + spec.max_len * max_encoded_size(spec.item)
    if k == "map":
        assert spec.key is not None and spec.item is not None and spec.max_len is not None
        return _MAX_HEADER + spec.max_len * (max_encoded_size(spec.key)
                                             + max_encoded_size(spec.item))
    assert k == "message" and spec.message is not None
    return max_fields_size(spec.message.SCHEMA)


def max_fields_size(schema: dict[str, Spec]) -> int:
    """max_encoded_size of a field map (a record's, or an RPC body's) with every field."""
    return _MAX_HEADER + sum(_MAX_HEADER + len(name.encode()) + max_encoded_size(spec)
                             for name, spec in schema.items())


# -------------------------------------------------------------------- records

M = TypeVar("M", bound="Message")
_REGISTRY: dict[str, type[Message]] = {}


class Message:
    """Base for typed records. Subclasses are frozen dataclasses with SCHEMA.

    `TYPE` names the record on the wire; records used only nested inside
    others may leave it empty and are then not registered for top-level
    decoding.
    """

    TYPE: ClassVar[str] = ""
    SCHEMA: ClassVar[dict[str, Spec]] = {}
    # Set by @message: the field names, in SCHEMA order, when no field needs `Spec.dump`
    # to convert it (no nested records or maps); None otherwise. See _wire_fields.
    _PLAIN: ClassVar[tuple[str, ...] | None] = None
    # Set by @message: True when the class keeps the dataclass-generated __init__ (no
    # __init__ or __post_init__ of its own), so from_fields may fill __dict__ directly.
    _DIRECT: ClassVar[bool] = False

    def to_fields(self) -> dict[str, Any]:
        return {name: spec.dump(getattr(self, name)) for name, spec in self.SCHEMA.items()
                if getattr(self, name) is not None}

    def _wire_fields(self) -> dict[str, Any]:
        """to_fields for encoding. Why: every datagram is encoded here, and for a message
        of scalars and scalar lists the per-field dump is the identity (a tuple packs as
        the same msgpack array as the list dump would make), so it is skipped."""
        plain = self._PLAIN
        if plain is None:
            return self.to_fields()
        values = self.__dict__
        return {name: v for name in plain if (v := values[name]) is not None}

    @classmethod
    def from_fields(cls: type[M], fields: object, where: str = "") -> M:
        if not isinstance(fields, dict):
            raise ProtocolError(f"{where or cls.TYPE or cls.__name__}: expected a record")
        schema = cls.SCHEMA
        for key in fields:
            if key not in schema:
                raise ProtocolError(f"{where or cls.TYPE or cls.__name__}: unknown field "
                                    f"{str(key)[:40]!r}")
        values = {}
        get = fields.get
        try:
            for name, spec in schema.items():
                values[name] = spec.check(name, get(name))
        except ProtocolError as err:
            raise ProtocolError(f"{where or cls.TYPE or cls.__name__}: {err.reason}") from None
        if cls._DIRECT:
            # what the generated __init__ would do, without its keyword parsing and
            # one object.__setattr__ per field: every field is in `values`
            obj = object.__new__(cls)
            obj.__dict__.update(values)
        else:
            obj = cls(**values)
        obj.validate()
        return obj

    def validate(self) -> None:
        """Cross-field checks; override and raise ProtocolError."""


def _direct_init(dc: type) -> Callable[..., None]:
    """The dataclass __init__ (same parameters, same defaults) writing each field into
    __dict__. Why: the frozen dataclass one calls object.__setattr__ per field, and the
    simulator builds a message per datagram; frozenness (no assignment after __init__)
    is unchanged."""
    flds = dataclasses.fields(dc)
    params: list[str] = []
    env: dict[str, Any] = {}
    for fld in flds:
        if fld.default_factory is not dataclasses.MISSING:
            env[f"_f_{fld.name}"] = fld.default_factory
            params.append(f"{fld.name}=_MISSING")
        elif fld.default is not dataclasses.MISSING:
            env[f"_d_{fld.name}"] = fld.default
            params.append(f"{fld.name}=_d_{fld.name}")
        else:
            params.append(fld.name)
    body = []
    for fld in flds:
        if fld.default_factory is not dataclasses.MISSING:
            body.append(f"    if {fld.name} is _MISSING: {fld.name} = _f_{fld.name}()")
        body.append(f"    d[{fld.name!r}] = {fld.name}")
    env["_MISSING"] = dataclasses.MISSING
    src = (f"def __init__(self, {', '.join(params)}):\n    d = self.__dict__\n"
           + "\n".join(body) + "\n")
    exec(src, env)  # the way dataclasses builds its own __init__
    init: Callable[..., None] = env["__init__"]
    init.__qualname__ = f"{dc.__qualname__}.__init__"
    return init


@dataclass_transform(frozen_default=True)
def message(cls: type[M]) -> type[M]:
    """Class decorator: make a frozen dataclass and register its TYPE."""
    direct = "__init__" not in cls.__dict__ and not hasattr(cls, "__post_init__")
    dc = dataclasses.dataclass(frozen=True, slots=False)(cls)
    direct = direct and all(fld.init and fld.kw_only is not True
                            for fld in dataclasses.fields(dc))  # type: ignore[arg-type]
    dc._DIRECT = direct
    if direct:
        dc.__init__ = _direct_init(dc)  # type: ignore[method-assign]
    fields = {fld.name for fld in dataclasses.fields(dc)}  # type: ignore[arg-type]
    if fields != set(dc.SCHEMA):
        raise TypeError(f"{dc.__name__}: SCHEMA {sorted(dc.SCHEMA)} != fields {sorted(fields)}")
    nested = ("message", "list", "map")
    dc._PLAIN = None if any(
        spec.kind in ("message", "map")
        or (spec.kind == "list" and spec.item is not None and spec.item.kind in nested)
        for spec in dc.SCHEMA.values()) else tuple(dc.SCHEMA)
    if dc.TYPE:
        if dc.TYPE in _REGISTRY and _REGISTRY[dc.TYPE] is not dc:
            raise TypeError(f"duplicate message type {dc.TYPE!r}")
        _REGISTRY[dc.TYPE] = dc
    return dc


# ------------------------------------------------------------ encode / decode


_PACKERS = threading.local()


def pack(obj: Any) -> bytes:
    """msgpack.packb(obj, use_bin_type=True) with a reused Packer. Why: building a
    Packer per call was most of the cost of packing a datagram; one per thread, since
    a Packer is not safe to share across threads (the pure-Python fallback)."""
    packer = getattr(_PACKERS, "packer", None)
    if packer is None:
        packer = _PACKERS.packer = msgpack.Packer(use_bin_type=True)
    out: bytes = packer.pack(obj)
    return out


def encode_payload(msg: Message) -> bytes:
    if not msg.TYPE:
        raise TypeError(f"{type(msg).__name__} has no wire TYPE")
    return pack([PROTOCOL_VERSION, msg.TYPE, msg._wire_fields()])


def decode_payload(data: bytes | memoryview, max_size: int = DEFAULT_MAX_FRAME,
                   expect: tuple[type[Message], ...] | None = None) -> Message:
    """Decode one payload; raise ProtocolError with a reason on anything wrong."""
    if len(data) > max_size:
        raise ProtocolError(f"message of {len(data)} bytes exceeds limit {max_size}")
    try:
        obj = msgpack.unpackb(data, raw=False, strict_map_key=False, use_list=True,
                              max_bin_len=max_size,
                              max_str_len=max_size, max_array_len=65536, max_map_len=65536)
    except Exception as err:  # msgpack raises a zoo of types on garbage
        raise ProtocolError(f"malformed msgpack: {type(err).__name__}") from None
    if not isinstance(obj, list) or len(obj) != 3:
        raise ProtocolError("malformed message: expected [version, type, fields]")
    version, type_name, fields = obj
    if type(version) is not int or version != PROTOCOL_VERSION:  # 1.0 and True == 1
        raise ProtocolError(f"unsupported protocol version {str(version)[:20]}")
    if not isinstance(type_name, str):
        raise ProtocolError("malformed message: type is not a string")
    cls = _REGISTRY.get(type_name)
    if cls is None:
        raise ProtocolError(f"unknown message type {type_name[:40]!r}")
    if expect is not None and cls not in expect:
        raise ProtocolError(f"unexpected message type {type_name!r}")
    return cls.from_fields(fields)


def encode_frame(msg: Message, max_size: int = DEFAULT_MAX_FRAME) -> bytes:
    payload = encode_payload(msg)
    if len(payload) > max_size:
        raise ProtocolError(f"{msg.TYPE}: frame of {len(payload)} bytes exceeds limit {max_size}")
    return _LEN.pack(len(payload)) + payload


class FrameDecoder:
    """Reassembles frames from a byte stream (a QUIC stream delivers arbitrary chunks).

    Rejects a frame as soon as its length prefix exceeds the limit, before
    buffering it, so a peer cannot make us hold more than one frame's worth.
    """

    def __init__(self, max_size: int = DEFAULT_MAX_FRAME,
                 expect: tuple[type[Message], ...] | None = None) -> None:
        self.max_size = max_size
        self.expect = expect
        self._buf = bytearray()

    def feed(self, data: bytes) -> Iterator[Message]:
        self._buf += data
        while True:
            if len(self._buf) < _LEN.size:
                return
            (n,) = _LEN.unpack_from(self._buf)
            if n > self.max_size:
                raise ProtocolError(f"frame of {n} bytes exceeds limit {self.max_size}")
            if len(self._buf) < _LEN.size + n:
                return
            payload = bytes(self._buf[_LEN.size:_LEN.size + n])
            del self._buf[:_LEN.size + n]
            yield decode_payload(payload, self.max_size, self.expect)

    @property
    def buffered(self) -> int:
        return len(self._buf)


def registered_types() -> dict[str, type[Message]]:
    return dict(_REGISTRY)

