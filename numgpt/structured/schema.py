"""JSON Schema -> a regular expression whose every match is a JSON text valid against the schema.

The supported subset (what OpenAI's structured outputs accept, plus bounds they leave out):
    type: object, array, string, integer, number, boolean, null, or a list of these
    object: properties, required, additionalProperties (false, true or a schema: no other key is ever
        written, which is valid either way); properties come in the schema's order (as OpenAI's)
    array: items (a schema), minItems, maxItems
    string: minLength, maxLength (in characters, as jsonschema counts them), or pattern (a regex, searched
        as JSON Schema says unless anchored with ^...$; not together with the lengths)
    integer: minimum, maximum, exclusiveMinimum, exclusiveMaximum (exact: a regex of the digit ranges)
    enum, const (any JSON values), anyOf (any one of the alternatives)
    $ref to the schema's own $defs / definitions (what pydantic writes for nested models), not recursive
    annotations ignored: title, description, $schema, $id, $comment, examples, default
Anything else (oneOf, allOf, not, a recursive $ref, format, uniqueItems, patternProperties, number bounds) is
refused with a message naming the keyword and where it is: generating text that merely *looks* right is
what this module exists to prevent.

Whitespace (a decision, as outlines'): at most one space where JSON allows whitespace (after `{`, `[`,
`:`, `,`, before `}`, `]`) -- bounded, so an untrained model cannot spin forever in blanks, and a trained one
can still write `{"a": 1, "b": 2}`. No newlines: pretty-printed output is not possible.

json_object (OpenAI's {"type": "json_object"}): any JSON object, values nested at most JSON_DEPTH levels
deep (a regular language cannot count brackets; deeper nesting is not generated). Strings, numbers and
arrays lengths are unbounded; a generation that never ends its string ends at max_tokens with
finish_reason "length", and then the text is not valid JSON (as OpenAI's API does).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from urllib.parse import unquote

from ..errors import NumgptError
from .regex import Alternate, Chars, Concat, RegexError, Repeat, complement, normalize, parse

WS = "[ ]?"
NOTHING = r"[^\s\S]"                      # the empty set of characters
JSON_DEPTH = 3
# One character of a JSON string: anything but " \ and control characters, or an escape; \u escapes of
# surrogates are left out so that every escape is one character of the decoded string (minLength counts).
HEX = "[0-9a-fA-F]"
STRING_CHAR = (r'(?:[^"\\\x00-\x1f]|\\["\\/bfnrt]|\\u(?:[0-9a-cA-CefEF]' + HEX + "{3}|[dD][0-7]" + HEX + "{2}))")
STRING = f'"{STRING_CHAR}*"'
INTEGER = "-?(?:0|[1-9][0-9]*)"
NUMBER = INTEGER + r"(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?"
BOOLEAN = "(?:true|false)"
NULL = "null"
ANNOTATIONS = {"title", "description", "$schema", "$id", "$comment", "examples", "default"}
MAX_LENGTH = 1000                          # a string's maxLength / an array's maxItems at most (spelled out)
MAX_REGEX = 100_000                        # characters of a schema's regex at most (arrays nested in arrays
                                           # write their item twice: the text doubles a level)
MAX_NESTING = 32                           # objects, arrays and anyOfs nested at most this deep
MAX_INTEGER_BOUND = 10 ** 30               # integer minimum/maximum at most this far from 0


class SchemaError(NumgptError):
    """A schema outside the supported subset, or malformed (the message names the keyword and where)."""


def json_value(depth: int) -> str:
    """Any JSON value with arrays and objects nested at most `depth` levels."""
    scalar = f"(?:{STRING}|{NUMBER}|{BOOLEAN}|{NULL})"
    if depth == 0:
        return scalar
    inner = json_value(depth - 1)
    return f"(?:{scalar}|{json_array(inner)}|{json_object(depth)})"


def json_array(item: str) -> str:
    return rf"\[{WS}(?:{item}(?:{WS},{WS}{item})*{WS})?\]"


def json_object(depth: int = JSON_DEPTH) -> str:
    """Any JSON object whose values nest at most depth - 1 more levels (OpenAI's json_object mode)."""
    member = f"{STRING}{WS}:{WS}{json_value(depth - 1)}"
    return rf"\{{{WS}(?:{member}(?:{WS},{WS}{member})*{WS})?\}}"


def literal(value) -> str:
    """A JSON value spelled exactly one way (compact, as json.dumps), as a regex."""
    return re.escape(json.dumps(value, separators=(",", ":"), ensure_ascii=False))


def integer_range(low: int | None, high: int | None) -> str:
    """JSON integers n with low <= n <= high (None: unbounded), as a regex with no leading zeros."""
    if low is not None and high is not None and low > high:
        raise _Empty()
    parts = []
    if low is None or low < 0:                                     # negatives: "-" then |n| in a range
        neg_low = 1 if high is None or high >= 0 else -high       # |n| from
        neg_high = None if low is None else -low
        if neg_high is None or neg_low <= neg_high:
            parts.append("-" + natural_range(neg_low, neg_high))
    if high is None or high >= 0:
        parts.append(natural_range(max(low or 0, 0) if low is not None else 0, high))
    return "(?:" + "|".join(parts) + ")"


def natural_range(low: int, high: int | None) -> str:
    """Decimal spellings of the whole numbers low..high (high None: unbounded), low >= 0."""
    parts = []
    if low == 0:
        parts.append("0")
        low = 1
        if high == 0:
            return "0"
    digits = len(str(low))
    while high is None or low <= high:
        top = 10 ** digits - 1
        if high is None and low == 10 ** (digits - 1):             # every number of this length and longer
            parts.append(f"[1-9][0-9]{{{digits - 1},}}")
            break
        end = top if high is None or high > top else high
        parts.append(same_length_range(str(low), str(end)))
        low, digits = end + 1, digits + 1
        if high is not None and low > high:
            break
    return "(?:" + "|".join(parts) + ")"


def same_length_range(a: str, b: str) -> str:
    """Digit strings of one length from a to b (the classic split on the first differing digit)."""
    if not a:
        return ""
    if a[0] == b[0]:
        return a[0] + same_length_range(a[1:], b[1:])
    n = len(a) - 1
    if a[1:] == "0" * n and b[1:] == "9" * n:
        return f"[{a[0]}-{b[0]}][0-9]{{{n}}}"
    parts = [a[0] + same_length_range(a[1:], "9" * n)]
    if int(a[0]) + 1 <= int(b[0]) - 1:
        parts.append(f"[{int(a[0]) + 1}-{int(b[0]) - 1}][0-9]{{{n}}}")
    parts.append(b[0] + same_length_range("0" * n, b[1:]))
    return "(?:" + "|".join(parts) + ")"


class _Empty(Exception):
    """No value satisfies this part of the schema."""


def _refuse(where: str, keyword: str, why: str = "is not supported") -> SchemaError:
    return SchemaError(f"the JSON schema keyword {keyword!r} at {where} {why} (structured outputs support "
                       "type, properties, required, additionalProperties, items, minItems, maxItems, enum, const, "
                       "pattern, minLength, maxLength, integer minimum/maximum/exclusiveMinimum/exclusiveMaximum, "
                       "anyOf, local $ref)")


def _count(where: str, schema: Mapping, keyword: str, default: int | None) -> int | None:
    value = schema.get(keyword, default)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise SchemaError(f"{keyword} at {where} must be a whole number >= 0, got {value!r}")
    if value > MAX_LENGTH:
        raise SchemaError(f"{keyword} at {where} is {value}, beyond the {MAX_LENGTH} structured outputs spell out")
    return value


def schema_regex(schema, where: str = "#", depth: int = 0) -> str:
    """The regex of the JSON texts valid against `schema` (see the module docstring for the subset), at
    `depth` objects, arrays and anyOfs down; refused when nested too deep or its regex gets too large."""
    if depth > MAX_NESTING:
        raise SchemaError(f"the JSON schema nests objects, arrays and anyOf more than {MAX_NESTING} deep (at "
                          f"{where if len(where) <= 80 else where[:77] + '...'})")
    regex = _schema_regex(schema, where, depth)
    if len(regex) > MAX_REGEX:
        raise SchemaError(f"the JSON schema is too large: at {where} its regular expression passes {MAX_REGEX:,} "
                          "characters (arrays of arrays write their items twice a level: give fewer levels, or "
                          "maxItems 1)")
    return regex


def _schema_regex(schema, where: str, depth: int) -> str:
    if schema is True or schema == {}:
        return json_value(JSON_DEPTH)
    if schema is False:
        raise _Empty()
    if not isinstance(schema, Mapping):
        raise SchemaError(f"the schema at {where} must be an object (a dict), got {type(schema).__name__}")
    known = ANNOTATIONS | {"type", "properties", "required", "additionalProperties", "items", "minItems",
                           "maxItems", "enum", "const", "pattern", "minLength", "maxLength", "minimum", "maximum",
                           "exclusiveMinimum", "exclusiveMaximum", "anyOf"}
    for keyword in schema:
        if keyword not in known:
            raise _refuse(where, keyword)
    if "anyOf" in schema:
        rest = {k: v for k, v in schema.items() if k != "anyOf" and k not in ANNOTATIONS}
        if rest:
            raise _refuse(where, next(iter(rest)), "beside anyOf is not supported (put it inside each alternative)")
        options = schema["anyOf"]
        if not isinstance(options, list) or not options:
            raise SchemaError(f"anyOf at {where} must be a non-empty list of schemas")
        return _alternatives([lambda k=k, s=s: schema_regex(s, f"{where}/anyOf/{k}", depth + 1)
                              for k, s in enumerate(options)])
    if "const" in schema or "enum" in schema:
        return _enum(schema, where)
    types = schema.get("type")
    if types is None:
        typed = [k for k in ("properties", "items", "pattern", "minLength", "minimum") if k in schema]
        if typed:
            raise SchemaError(f"the schema at {where} has {typed[0]!r} but no 'type': say which type it is")
        return json_value(JSON_DEPTH)
    names = types if isinstance(types, list) else [types]
    builders = {"object": _object, "array": _array, "string": _string, "integer": _integer,
                "number": _number, "boolean": lambda s, w, d: BOOLEAN, "null": lambda s, w, d: NULL}
    for name in names:
        if name not in builders:
            raise SchemaError(f"type at {where} must be one of {', '.join(builders)} (or a list of them), got {name!r}")
    if len(names) > 1:
        own = {"object": {"properties", "required", "additionalProperties"}, "array": {"items", "minItems", "maxItems"},
               "string": {"pattern", "minLength", "maxLength"},
               "integer": {"minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"}}
        for keyword in schema:                 # a bound applies to its own type only: refuse the subtle case
            if keyword not in ANNOTATIONS | {"type"} and not any(keyword in own.get(n, ()) for n in names):
                raise _refuse(where, keyword, "does not apply to these types")
            if keyword in {"minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"} and "number" in names:
                raise _refuse(where, keyword, "on a number is not supported (only on integers: exact bounds)")
    return _alternatives([lambda n=n: builders[n](schema, where, depth) for n in names])


def _alternatives(builders) -> str:
    got = []
    for build in builders:
        try:
            got.append(build())
        except _Empty:
            continue
    if not got:
        raise _Empty()
    return "(?:" + "|".join(got) + ")"


def _enum(schema: Mapping, where: str) -> str:
    values = [schema["const"]] if "const" in schema else schema["enum"]
    if not isinstance(values, list):
        raise SchemaError(f"enum at {where} must be a list of values, got {type(values).__name__}")
    for v in values:
        try:
            json.dumps(v, allow_nan=False)
        except (ValueError, TypeError):
            raise SchemaError(f"{'const' if 'const' in schema else 'enum'} at {where} holds {v!r}, which is not "
                              "a JSON value") from None
    extra = [k for k in schema if k not in ANNOTATIONS | {"const", "enum", "type"}]
    if extra:
        raise _refuse(where, extra[0], "beside enum/const is not supported")
    if "type" in schema:                        # keep the values of the right type (a subset stays valid)
        types = schema["type"] if isinstance(schema["type"], list) else [schema["type"]]
        values = [v for v in values if json_types(v) & set(types)]
    if "const" in schema and "enum" in schema and schema["const"] not in schema["enum"]:
        raise _Empty()
    if not values:
        raise _Empty()
    return "(?:" + "|".join(literal(v) for v in values) + ")"


def json_types(value) -> set[str]:
    """The JSON Schema types a Python value (from json.loads) belongs to."""
    if isinstance(value, bool):
        return {"boolean"}
    if isinstance(value, int):
        return {"integer", "number"}
    if isinstance(value, float):
        return {"number", "integer"} if value.is_integer() else {"number"}
    return {str: {"string"}, type(None): {"null"}, list: {"array"}, dict: {"object"}}.get(type(value), set())


def _object(schema: Mapping, where: str, depth: int) -> str:
    properties = schema.get("properties", {})
    extra = schema.get("additionalProperties", False)
    if not isinstance(extra, (bool, Mapping)):
        raise SchemaError(f"additionalProperties at {where} must be true, false or a schema, got {extra!r}")
    if not isinstance(properties, Mapping):
        raise SchemaError(f"properties at {where} must be an object of schemas")
    required = schema.get("required", [])
    if not isinstance(required, list) or any(not isinstance(r, str) for r in required):
        raise SchemaError(f"required at {where} must be a list of property names")
    missing = [r for r in required if r not in properties]
    if missing:
        raise _refuse(where, "required", f"names {missing[0]!r}, which is not in properties (say its schema "
                      "there)")
    if "properties" not in schema and "additionalProperties" not in schema:
        return json_object(JSON_DEPTH)          # {"type": "object"}: any object
    members = []
    for name, sub in properties.items():
        key = literal(name)
        try:
            members.append((f"{key}{WS}:{WS}{schema_regex(sub, f'{where}/properties/{name}', depth + 1)}",
                            name in required))
        except _Empty:
            if name in required:
                raise
    return rf"\{{{WS}" + _members(members, 0, False) + rf"{WS}\}}"


def _members(members: list[tuple[str, bool]], i: int, written: bool) -> str:
    """The members from i on, in order, each optional one present or not, commas between."""
    if i == len(members):
        return ""
    text, required = members[i]
    if written:                                # the rest does not depend on whether this one is written
        sep = f"{WS},{WS}"
        return (sep + text if required else f"(?:{sep}{text})?") + _members(members, i + 1, True)
    present = text + _members(members, i + 1, True)
    if required:
        return present
    return f"(?:{present}|{_members(members, i + 1, False)})"


def _array(schema: Mapping, where: str, depth: int) -> str:
    low = _count(where, schema, "minItems", 0)
    high = _count(where, schema, "maxItems", None)
    items = schema.get("items", True)
    if isinstance(items, list):
        raise _refuse(where, "items", "as a list (tuple validation) is not supported")
    if high is not None and high < low:
        raise _Empty()
    try:
        item = schema_regex(items, f"{where}/items", depth + 1)
    except _Empty:
        if low > 0:
            raise
        return rf"\[{WS}\]"
    sep = f"{WS},{WS}"
    if high == 0:
        return rf"\[{WS}\]"
    more_low = max(low - 1, 0)
    more = "" if high == 1 else f"(?:{sep}{item}){{{more_low},{'' if high is None else high - 1}}}"
    body = f"{item}{more}{WS}"
    return rf"\[{WS}{body}\]" if low > 0 else rf"\[{WS}(?:{body})?\]"


def _string(schema: Mapping, where: str, depth: int) -> str:
    low = _count(where, schema, "minLength", 0)
    high = _count(where, schema, "maxLength", None)
    if high is not None and high < low:
        raise _Empty()
    if "pattern" in schema:
        if "minLength" in schema or "maxLength" in schema:
            raise _refuse(where, "pattern", "together with minLength/maxLength is not supported")
        return '"' + json_pattern(schema["pattern"], f"{where}/pattern") + '"'
    return f'"{STRING_CHAR}{{{low},{"" if high is None else high}}}"'


def _integer(schema: Mapping, where: str, depth: int) -> str:
    low, high = None, None
    for keyword in ("minimum", "exclusiveMinimum", "maximum", "exclusiveMaximum"):
        if keyword not in schema:
            continue
        value = schema[keyword]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise SchemaError(f"{keyword} at {where} must be a number, got {value!r}")
        if abs(value) > MAX_INTEGER_BOUND:
            raise SchemaError(f"{keyword} at {where} is {value!r}: integer bounds are supported up to 1e30 either "
                              "side of 0")
        if keyword == "minimum":
            bound = math.ceil(value)
        elif keyword == "exclusiveMinimum":
            bound = math.floor(value) + 1
        elif keyword == "maximum":
            bound = math.floor(value)
        else:
            bound = math.ceil(value) - 1
        if "inimum" in keyword:
            low = bound if low is None else max(low, bound)
        else:
            high = bound if high is None else min(high, bound)
    return integer_range(low, high)


def _number(schema: Mapping, where: str, depth: int) -> str:
    for keyword in ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"):
        if keyword in schema:
            raise _refuse(where, keyword, "on a number is not supported (only on integers, where the bound "
                          "can be spelled exactly)")
    return NUMBER


def json_pattern(pattern: str, where: str) -> str:
    """A JSON Schema `pattern` (searched, not anchored, unless ^...$) as a regex over the *JSON-encoded*
    characters of a string: each character spelled raw, or escaped where JSON requires it (" \\ and
    control characters), so every match decodes to a string the pattern matches."""
    if not isinstance(pattern, str):
        raise SchemaError(f"pattern at {where} must be a string")
    try:
        tree = parse(pattern)
    except RegexError as e:
        raise SchemaError(f"pattern at {where}: {e}") from None
    anywhere = Repeat(Chars(complement(())), 0, None)
    start = pattern.startswith("^")
    end = pattern.endswith("$") and not pattern.endswith("\\$")
    tree = Concat(tuple(([] if start else [anywhere]) + [tree] + ([] if end else [anywhere])))
    return _encode_tree(tree)


def _char_regex(cp: int) -> str:
    """One code point as a regex literal (inside a class or alone)."""
    return f"\\u{cp:04x}" if cp <= 0xFFFF else re.escape(chr(cp))


def _class_regex(ranges) -> str:
    """A code-point set as a regex class of raw characters."""
    if not ranges:
        return NOTHING
    body = "".join(_char_regex(lo) if lo == hi else f"{_char_regex(lo)}-{_char_regex(hi)}" for lo, hi in ranges)
    return f"[{body}]"


JSON_ESCAPED = ((0, 0x1F), (0x22, 0x22), (0x5C, 0x5C))      # characters a JSON string must escape
ESCAPED = {ord('"'): r'\\"', ord("\\"): r"\\\\", 8: r"\\b", 12: r"\\f", 10: r"\\n", 13: r"\\r", 9: r"\\t"}


def _encode_tree(node) -> str:
    """The regex text of a pattern's tree with each character set JSON-encoded (see json_pattern)."""
    if isinstance(node, Concat):
        return "(?:" + "".join(_encode_tree(p) for p in node.parts) + ")"
    if isinstance(node, Alternate):
        return "(?:" + "|".join(_encode_tree(o) for o in node.options) + ")"
    if isinstance(node, Repeat):
        return f"(?:{_encode_tree(node.node)}){{{node.low},{'' if node.high is None else node.high}}}"
    assert isinstance(node, Chars)
    chars = normalize(node.ranges)
    escaped = [cp for lo, hi in chars for cp in range(lo, min(hi, 0x1F) + 1)]     # control characters
    escaped += [cp for cp in (0x22, 0x5C) if any(lo <= cp <= hi for lo, hi in chars)]   # " and \\
    plain = complement(complement(chars) + JSON_ESCAPED)           # the rest, written as they are
    options = ([_class_regex(plain)] if plain else []) + [ESCAPED.get(cp, f"\\\\u{cp:04x}") for cp in escaped]
    return "(?:" + "|".join(options) + ")" if options else NOTHING


def inline_refs(node, root, where: str = "#", seen: tuple[str, ...] = ()):
    """The schema with every local $ref ("#/$defs/Name", "#/definitions/Name", any "#/..." pointer)
    replaced by what it points to; a recursive one is refused (its language is not regular)."""
    if isinstance(node, list):
        return [inline_refs(v, root, f"{where}/{k}", seen) for k, v in enumerate(node)]
    if not isinstance(node, Mapping):
        return node
    if "$ref" in node:
        ref = node["$ref"]
        extra = [k for k in node if k not in ANNOTATIONS | {"$ref", "$defs", "definitions"}]
        if extra:
            raise _refuse(where, extra[0], "beside $ref is not supported")
        if not isinstance(ref, str) or not ref.startswith("#"):
            raise _refuse(where, "$ref", f"to {ref!r} is not supported (only the schema's own #/... definitions)")
        if ref in seen:
            raise _refuse(where, "$ref", f"to {ref!r} is recursive: no regular expression follows it")
        target = root
        for part in [unquote(p).replace("~1", "/").replace("~0", "~") for p in ref[1:].split("/") if p]:
            if not isinstance(target, Mapping) or part not in target:
                raise _refuse(where, "$ref", f"to {ref!r} points at nothing in the schema")
            target = target[part]
        return inline_refs(target, root, ref, seen + (ref,))
    return {k: v if k in ("$defs", "definitions", "const", "enum", "default", "examples")
            else inline_refs(v, root, f"{where}/{k}", seen) for k, v in node.items()}


def schema_to_regex(schema) -> str:
    """The regex of a JSON schema (SchemaError naming the keyword outside the subset; 'no text satisfies'
    when nothing can)."""
    if isinstance(schema, str):
        try:
            schema = json.loads(schema)
        except json.JSONDecodeError as e:
            raise SchemaError(f"the JSON schema is not valid JSON: {e}") from None
    if isinstance(schema, Mapping):
        schema = inline_refs(schema, schema)
        schema = {k: v for k, v in schema.items() if k not in ("$defs", "definitions")}
    try:
        regex = schema_regex(schema)
        if regex is None:
            raise _Empty()
        return regex
    except _Empty:
        raise SchemaError("no text satisfies the JSON schema (an empty enum, a maximum below the minimum, ...)") \
            from None
