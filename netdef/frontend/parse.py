"""Protobuf text format (prototxt) -> message, with a location for every field.

A small descriptor-driven recursive-descent parser. We do not use
``google.protobuf.text_format`` for reading because it stops at the first
problem with a terse message and keeps no positions; netdef needs
``file:line:col`` for every field (graph and shape errors point back into
the prototxt) and "did you mean" hints. ``text_format`` is only used to
*write* (``to_text``), where it is exact.

Accepted syntax (everything protobuf's text format accepts in practice):
``#`` comments, ``field: value``, ``field { ... }``, ``field: { ... }``,
``field < ... >``, optional ``,``/``;`` separators, single/double-quoted
strings with C escapes and adjacent-literal concatenation, decimal/hex/octal
integers, floats (``0.``, ``.5``, ``1e-08``, ``1.0f``, ``inf``, ``nan``),
bools (true/false/True/False/t/f/1/0), enums by name or number and
``field: [a, b]`` lists for repeated fields.
"""
from __future__ import annotations

import bisect
import re

from google.protobuf import text_format
from google.protobuf.descriptor import FieldDescriptor as FD

from netdef.errors import Location, ParseError, did_you_mean

__all__ = ["SourceMap", "parse_message", "to_text"]

# One match per token: leading whitespace/comments are skipped inside the
# match itself so the Python loop only sees real tokens. 'bad' catches any
# other character (including an opening quote whose string never closes) and
# is reported by the parser when it reaches it, so errors come in file order.
# Since 'bad' matches any character and \Z the end, the skip part never has to
# backtrack into a comment (which would turn its tail into tokens).
_TOKEN_RE = re.compile(
    r"""(?:[ \t\r\n\f\v\ufeff]+|\#[^\n]*)*
    (?:(?P<ident>[A-Za-z_][A-Za-z0-9_]*)
      |(?P<num>[-+]?(?:[0-9]|\.[0-9])[A-Za-z0-9_.+-]*|-[A-Za-z_][A-Za-z0-9_]*)
      |(?P<str>"(?:[^"\\\n]|\\.)*"|'(?:[^'\\\n]|\\.)*')
      |(?P<sym>[{}<>\[\]:,;])
      |(?P<bad>.)
      |\Z)""",
    re.VERBOSE,
)
_ESCAPE_RE = re.compile(rb"\\(?:([0-7]{1,3})|x([0-9a-fA-F]{1,2})|u([0-9a-fA-F]{4})"
                        rb"|U([0-9a-fA-F]{8})|(.))", re.DOTALL)
_SIMPLE_ESCAPES = {b"n": b"\n", b"t": b"\t", b"r": b"\r", b"a": b"\a", b"b": b"\b",
                   b"f": b"\f", b"v": b"\v", b"\\": b"\\", b"'": b"'", b'"': b'"',
                   b"?": b"?"}
_INF_NAN_RE = re.compile(r"(-?(?:inf(?:inity)?|nan))f?$", re.IGNORECASE)
_OCTAL_RE = re.compile(r"-?0[0-7]+$")
_TRUE = {"true", "True", "t", "1"}
_FALSE = {"false", "False", "f", "0"}
_CLOSER = {"{": "}", "<": ">"}
EOF = "eof"

_INT_RANGES = {  # field type -> (name, lowest, highest)
    FD.TYPE_INT32: ("int32", -(2**31), 2**31 - 1),
    FD.TYPE_SINT32: ("sint32", -(2**31), 2**31 - 1),
    FD.TYPE_SFIXED32: ("sfixed32", -(2**31), 2**31 - 1),
    FD.TYPE_INT64: ("int64", -(2**63), 2**63 - 1),
    FD.TYPE_SINT64: ("sint64", -(2**63), 2**63 - 1),
    FD.TYPE_SFIXED64: ("sfixed64", -(2**63), 2**63 - 1),
    FD.TYPE_UINT32: ("uint32", 0, 2**32 - 1),
    FD.TYPE_FIXED32: ("fixed32", 0, 2**32 - 1),
    FD.TYPE_UINT64: ("uint64", 0, 2**64 - 1),
    FD.TYPE_FIXED64: ("fixed64", 0, 2**64 - 1),
}
_TYPE_NAMES = {FD.TYPE_FLOAT: "float", FD.TYPE_DOUBLE: "double", FD.TYPE_BOOL: "bool",
               FD.TYPE_STRING: "string", FD.TYPE_BYTES: "bytes", FD.TYPE_ENUM: "enum"}


class SourceMap:
    """Where every field occurrence of a parsed message starts.

    Paths are tuples of field names, with the index after a repeated field:
    ``("layer", 3, "convolution_param", "kernel_size", 0)``. A message
    entry's path (``("layer", 3)``) maps to its field name token. Offsets
    are stored and turned into 1-based line:col only when asked.
    """

    def __init__(self, filename: str, text: str):
        self.filename = filename
        self.offsets: dict[tuple, int] = {}
        self._newlines = [m.start() for m in re.finditer("\n", text)]

    def location(self, path) -> Location | None:
        offset = self.offsets.get(tuple(path))
        return None if offset is None else self.location_at(offset)

    def location_at(self, offset: int) -> Location:
        line = bisect.bisect_left(self._newlines, offset)
        start = self._newlines[line - 1] + 1 if line else 0
        return Location(self.filename, line + 1, offset - start + 1)

    def __contains__(self, path) -> bool:
        return tuple(path) in self.offsets

    def __len__(self) -> int:
        return len(self.offsets)


class _Field:
    """What the parser needs to know about one field, read once per descriptor."""

    __slots__ = ("name", "repeated", "type", "message", "enum", "owner", "type_name")

    def __init__(self, fd, owner: str):
        self.name = fd.name
        self.repeated = fd.is_repeated
        self.type = fd.type
        self.message = fd.message_type if fd.type in (FD.TYPE_MESSAGE, FD.TYPE_GROUP) else None
        self.enum = fd.enum_type
        self.owner = owner
        if self.message is not None:
            self.type_name = self.message.name
        elif self.enum is not None:
            self.type_name = self.enum.name
        else:
            self.type_name = _INT_RANGES.get(fd.type, (_TYPE_NAMES.get(fd.type, "?"),))[0]


_FIELDS_CACHE: dict = {}


def _fields_of(desc):
    """(fields by name, required field names) of a message descriptor, cached."""
    entry = _FIELDS_CACHE.get(desc.full_name)
    if entry is None:
        fields = {fd.name: _Field(fd, desc.name) for fd in desc.fields}
        required = [fd.name for fd in desc.fields if fd.is_required]
        entry = _FIELDS_CACHE[desc.full_name] = (fields, required)
    return entry


class _Parser:
    def __init__(self, text: str, filename: str, root_desc, errors: list | None = None):
        self.root_desc = root_desc
        self.text = text
        # With a list, a bad field is recorded here and skipped, and parsing
        # goes on (``netdef check`` reports every problem in one run).
        self.errors = errors
        self.sm = SourceMap(filename, text)
        tokens = [(m.lastgroup, m.group(m.lastgroup), m.start(m.lastgroup))
                  for m in _TOKEN_RE.finditer(text) if m.lastgroup]
        tokens.append((EOF, "", len(text)))
        self.tokens = tokens
        self.i = 0
        # (descriptor, field name, offset of its '{') of every open message,
        # for the "is a '}' missing?" hint.
        self.open: list[tuple] = []

    # -- errors ------------------------------------------------------------
    def error(self, offset: int, message: str, hint: str | None = None) -> ParseError:
        return ParseError(message, where=self.sm.location_at(offset), hint=hint)

    def expected(self, what: str, tok, hint: str | None = None) -> ParseError:
        kind, text, offset = tok
        if kind == "bad" and text in "\"'":
            return self.error(offset, "unterminated string: the closing "
                              f"{text} is missing on this line")
        if kind == EOF:
            return self.error(offset, f"unexpected end of file: expected {what}", hint)
        return self.error(offset, f"expected {what}, got {text!r}", hint)

    # -- structure -----------------------------------------------------------
    def parse_fields(self, msg, desc, path: tuple, closer: str | None) -> None:
        fields, required = _fields_of(desc)
        seen: set[str] = set()
        tokens = self.tokens
        while True:
            kind, text, offset = tokens[self.i]
            if kind == "ident":
                start = self.i
                self.i += 1
                try:
                    field = fields.get(text)
                    if field is None:
                        raise self.unknown_field(text, offset, desc, fields)
                    self.parse_field(msg, field, path, offset, seen)
                except ParseError as err:
                    if not self.recover(err, start):
                        raise
                if tokens[self.i][1] in (",", ";") and tokens[self.i][0] == "sym":
                    self.i += 1
                continue
            if kind == "sym" and text in "}>":
                if closer is None:
                    err = self.error(offset, f"unexpected {text!r}: no message is open here")
                    if self.errors is None:
                        raise err
                    self.errors.append(err)
                    self.i += 1
                    continue
                if text != closer:
                    raise self.unclosed_error(offset, closer, text)
                self.i += 1
                break
            if kind == EOF:
                if closer is not None:
                    raise self.unclosed_error(offset, None, "")
                break
            err = self.expected("a field name", tokens[self.i])
            if self.errors is None:
                raise err
            self.errors.append(err)      # a stray value: skip it (a broken string: its line)
            self.i = self.after_line(self.i) if kind == "bad" and text in "\"'" else self.i + 1
        for name in required:
            if not msg.HasField(name):
                where = self.sm.offsets.get(path, 0)
                owner = f"'{path[-2] if isinstance(path[-1], int) else path[-1]}' " if path else ""
                err = self.error(where, f"missing required field {name!r} in {owner}"
                                 f"({desc.name})", hint=f"set {name}: <value>")
                if self.errors is None:
                    raise err
                self.errors.append(err)

    def recover(self, err: ParseError, start: int) -> bool:
        """Record ``err`` and skip the field that starts at token ``start``.

        Returns False (the caller re-raises) when not collecting, or when the
        text around the field is broken (a brace missing, the file ending
        inside the value): skipping then would only invent errors.
        """
        if self.errors is None or getattr(err, "structural", False):
            return False
        tokens = self.tokens
        i = start + 1
        if tokens[i][:2] == ("sym", ":"):
            i += 1
        kind, text, _ = tokens[i]
        if kind == "sym" and text in "{<[":
            depth = 0
            while True:                       # to the matching closer
                kind, text, _ = tokens[i]
                if kind == EOF:
                    return False
                if kind == "sym" and text in "{<[":
                    depth += 1
                elif kind == "sym" and text in "}>]":
                    depth -= 1
                    if depth == 0:
                        i += 1
                        break
                i += 1
        elif kind == "str":
            while tokens[i][0] == "str":
                i += 1
        elif kind == "bad" and text in "\"'":
            i = self.after_line(i)         # an unterminated string runs to the line's end
        elif kind in ("ident", "num", "bad"):
            i += 1
        self.errors.append(err)
        self.i = i
        return True

    def after_line(self, i: int) -> int:
        """Index of the first token after the line of token ``i``."""
        end = self.text.find("\n", self.tokens[i][2])
        if end < 0:
            return len(self.tokens) - 1             # the EOF token
        while self.tokens[i][0] != EOF and self.tokens[i][2] < end:
            i += 1
        return i

    def unclosed_error(self, offset: int, closer: str | None, found: str) -> ParseError:
        _, name, opened = self.open[-1]
        at = self.sm.location_at(opened)
        if closer is None:  # end of file: point at the '{' that was never closed
            err = ParseError(f"'{{' of {name!r} is never closed: the file ends at "
                             f"{self.sm.location_at(offset)}", where=at,
                             hint="add the missing '}'")
        else:
            err = self.error(offset, f"expected {closer!r} to close the message {name!r} "
                             f"opened at {at}, got {found!r}")
        err.structural = True
        return err

    def unknown_field(self, name: str, offset: int, desc, fields) -> ParseError:
        hint = did_you_mean(name, fields)
        # A field of an enclosing message usually means a '}' was forgotten.
        ancestors = [self.root_desc] + [d for d, _, _ in self.open[:-1]] if self.open else []
        for outer in reversed(ancestors):
            if name in _fields_of(outer)[0]:
                _, inner_name, opened = self.open[-1]
                hint = (f"'{name}' belongs to {outer.name}: is a '}}' missing? the '{{' of "
                        f"{inner_name!r} at {self.sm.location_at(opened)} is still open")
                err = self.error(offset, f"unknown field {name!r} in {desc.name}", hint)
                err.structural = True         # the nesting is off: stop there
                return err
        return self.error(offset, f"unknown field {name!r} in {desc.name}", hint)

    def parse_field(self, msg, field: _Field, path: tuple, offset: int, seen: set) -> None:
        name = field.name
        if not field.repeated:
            if name in seen:
                first = self.sm.location(path + (name,))
                raise self.error(offset, f"field {name!r} is set twice in {field.owner} "
                                 f"(first at line {first.line}:{first.col})",
                                 hint=f"{name!r} is not repeated: keep one value")
            seen.add(name)
        tokens = self.tokens
        kind, text, tok_offset = tokens[self.i]
        colon = kind == "sym" and text == ":"
        if colon:
            self.i += 1
            kind, text, tok_offset = tokens[self.i]
        if kind == "sym" and text == "[" and (colon or field.message is not None):
            if not field.repeated:
                raise self.error(tok_offset, f"field {name!r} is not repeated: the '[ ... ]' "
                                 "list syntax is only for repeated fields")
            self.i += 1
            self.parse_list(msg, field, path)
            return
        if field.message is not None:
            if kind == "sym" and text in _CLOSER:
                self.i += 1
                self.parse_submessage(msg, field, path, offset, tok_offset, _CLOSER[text])
                return
            raise self.expected(f"'{{' to open message field {name!r} ({field.type_name})",
                                tokens[self.i],
                                hint=None if kind == EOF else f"{name!r} is a message: write "
                                f"{name} {{ ... }}")
        if kind == "sym" and text in _CLOSER:
            raise self.error(tok_offset, f"field {name!r} is a {field.type_name}, "
                             "not a message", hint=f"write {name}: <value>")
        if not colon:
            raise self.expected(f"':' or '{{' after field name {name!r}", tokens[self.i])
        self.parse_scalar(msg, field, path, offset)

    def parse_submessage(self, msg, field, path, offset, brace_offset, closer) -> None:
        name = field.name
        if field.repeated:
            container = getattr(msg, name)
            sub_path = path + (name, len(container))
            sub = container.add()
        else:
            sub_path = path + (name,)
            sub = getattr(msg, name)
            sub.SetInParent()
        self.sm.offsets[sub_path] = offset
        self.open.append((field.message, name, brace_offset))
        try:
            self.parse_fields(sub, field.message, sub_path, closer)
        finally:
            self.open.pop()

    def parse_list(self, msg, field: _Field, path: tuple) -> None:
        tokens = self.tokens
        if tokens[self.i][:2] == ("sym", "]"):
            self.i += 1
            return
        while True:
            kind, text, offset = tokens[self.i]
            if field.message is not None:
                if not (kind == "sym" and text in _CLOSER):
                    raise self.expected(f"'{{' to start an element of {field.name!r}",
                                        tokens[self.i])
                self.i += 1
                self.parse_submessage(msg, field, path, offset, offset, _CLOSER[text])
            else:
                self.parse_scalar(msg, field, path, offset)
            kind, text, offset = tokens[self.i]
            self.i += 1
            if kind == "sym" and text == "]":
                return
            if not (kind == "sym" and text == ","):
                self.i -= 1
                raise self.expected(f"',' or ']' in the list of {field.name!r}", tokens[self.i])

    # -- values ----------------------------------------------------------------
    def parse_scalar(self, msg, field: _Field, path: tuple, offset: int) -> None:
        value = self.read_value(field)
        name = field.name
        if field.repeated:
            container = getattr(msg, name)
            self.sm.offsets[path + (name, len(container))] = offset
            container.append(value)
        else:
            self.sm.offsets[path + (name,)] = offset
            setattr(msg, name, value)

    def read_value(self, field: _Field):
        tok = self.tokens[self.i]
        kind, text, offset = tok
        ftype = field.type
        if ftype in (FD.TYPE_STRING, FD.TYPE_BYTES):
            return self.read_string(field)
        self.i += 1
        if ftype in _INT_RANGES:
            return self.read_int(field, tok)
        if ftype in (FD.TYPE_FLOAT, FD.TYPE_DOUBLE):
            value = _to_float(text) if kind in ("num", "ident") else None
            if value is None:
                raise self.expected(f"a number for {field.name!r} ({field.type_name})", tok)
            return value
        if ftype == FD.TYPE_BOOL:
            if kind in ("ident", "num") and text in _TRUE:
                return True
            if kind in ("ident", "num") and text in _FALSE:
                return False
            raise self.expected(f"true or false for {field.name!r}", tok)
        if ftype == FD.TYPE_ENUM:
            return self.read_enum(field, tok)
        raise self.error(offset, f"field {field.name!r} has an unsupported type")  # groups

    def read_int(self, field: _Field, tok) -> int:
        kind, text, offset = tok
        type_name, low, high = _INT_RANGES[field.type]
        value = _to_int(text) if kind == "num" else None
        if value is None:
            raise self.expected(f"an integer for {field.name!r} ({type_name})", tok)
        if not low <= value <= high:
            what = "a non-negative integer" if value < 0 <= low else "an integer"
            raise self.error(offset, f"expected {what} for {field.name!r} ({type_name}), "
                             f"got {text} (allowed: {low} .. {high})")
        return value

    def read_enum(self, field: _Field, tok) -> int:
        kind, text, offset = tok
        enum = field.enum
        names = [v.name for v in enum.values]
        valid = "valid: " + ", ".join(names)
        if kind == "ident":
            value = enum.values_by_name.get(text)
            if value is not None:
                return value.number
            hint = did_you_mean(text, names)
            raise self.error(offset, f"unknown value {text!r} for {field.name!r} "
                             f"({enum.name})", hint=f"{hint} {valid}" if hint else valid)
        number = _to_int(text) if kind == "num" else None
        if number is None:
            raise self.expected(f"a {enum.name} name for {field.name!r}", tok, hint=valid)
        if number not in enum.values_by_number:
            raise self.error(offset, f"{number} is not a value of {enum.name} "
                             f"(field {field.name!r})", hint=valid)
        return number

    def read_string(self, field: _Field):
        tokens = self.tokens
        parts = []
        while tokens[self.i][0] == "str":
            parts.append(tokens[self.i])
            self.i += 1
        if not parts:
            tok = tokens[self.i]
            hint = f'put it in quotes: "{tok[1]}"' if tok[0] in ("ident", "num") else None
            raise self.expected(f"a quoted string for {field.name!r}", tok, hint)
        chunks = []
        for _, text, offset in parts:
            body = text[1:-1]
            chunks.append(body.encode("utf-8") if "\\" not in body
                          else self.unescape(body, offset))
        data = b"".join(chunks)
        if field.type == FD.TYPE_BYTES:
            return data
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError:
            raise self.error(parts[0][2], f"string for {field.name!r} is not valid UTF-8 "
                             "after unescaping") from None

    def unescape(self, body: str, offset: int) -> bytes:
        def one(m):
            octal, hex2, u4, u8, other = m.groups()
            if octal:
                return bytes([int(octal, 8) & 0xFF])
            if hex2:
                return bytes([int(hex2, 16)])
            if u4 or u8:
                return chr(int(u4 or u8, 16)).encode("utf-8", "surrogatepass")
            if other in _SIMPLE_ESCAPES:
                return _SIMPLE_ESCAPES[other]
            raise self.error(offset, f"invalid escape '\\{other.decode(errors='replace')}' "
                             "in string", hint="write '\\\\' for a backslash")
        return _ESCAPE_RE.sub(one, body.encode("utf-8"))


def _to_int(text: str) -> int | None:
    """Decimal, 0x hex or C-style 0-prefixed octal, with an optional sign."""
    try:
        if _OCTAL_RE.match(text):
            return int(text.replace("0", "0o", 1), 0)
        return int(text, 0)
    except ValueError:
        return None


def _to_float(text: str) -> float | None:
    special = _INF_NAN_RE.match(text)
    if special:
        return float(special.group(1))
    if text[:1].isalpha() or text[:1] == "_":
        return None
    for candidate in (text, text[:-1] if text[-1:] in "fF" else None):
        if candidate:
            try:
                return float(candidate)
            except ValueError:
                pass
    return None


def parse_message(text: str, message_class, filename: str = "<string>", *,
                  errors: list | None = None):
    """Parse prototxt ``text`` into a new ``message_class``; return (message, SourceMap).

    Raises ParseError with the file:line:col of the first problem. With an
    ``errors`` list, every problem the parser can step over (an unknown
    field, a bad value, a stray token, a missing required field) is
    appended there instead and the field is skipped, so the message holds
    everything else; a problem it cannot step over (unbalanced braces) is
    appended last and parsing stops there.
    """
    message = message_class()
    parser = _Parser(text, filename, message.DESCRIPTOR, errors)
    try:
        parser.parse_fields(message, message.DESCRIPTOR, (), None)
    except ParseError as err:
        if errors is None:
            raise
        errors.append(err)
    return message, parser.sm


def to_text(message) -> str:
    """Prototxt for ``message`` that ``parse_message`` reads back to an equal message.

    Float fields print as the shortest decimal that round-trips through
    float32 (0.0001, not 9.99999974738e-05).
    """
    return text_format.MessageToString(message, as_utf8=True)
