"""OData query options for collections: $filter, $orderby, $top, $skip, $select, $expand, $count.

`$filter` is parsed with the maintained `odata-query` grammar (an AST of frozen dataclasses) and compiled once
per request into a plain Python predicate over the stored dicts, so filtering tens of thousands of records is
one function call per record. Like Microsoft's service the compiler is strict about types (a datetime field
compared with a string literal is an error) and compares strings case-insensitively.
"""

from __future__ import annotations

import datetime as dt
import operator
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from urllib.parse import urlencode

from odata_query import ast
from odata_query import exceptions as odata_exceptions
from odata_query.grammar import ODataLexer, ODataParser
from sly.lex import Token

MAX_TOP = 10000
PAGE_SIZE = 10000

# Field types of an entity schema.
STR, DATETIME, INT, BOOL, STR_LIST, OBJ_LIST, OBJ = "str", "datetime", "int", "bool", "str_list", "obj_list", "obj"


class ODataError(Exception):
    """An invalid query option; the API answers 400 with code ODataError and this message."""


@dataclass(frozen=True)
class Schema:
    """What a collection allows: every field (for $select/$orderby) and the filterable ones with their types."""

    entity_set: str
    fields: tuple[str, ...]
    filterable: dict[str, str]
    sub_fields: dict[str, dict[str, str]] = field(default_factory=dict)  # for OBJ_LIST fields
    expandable: tuple[str, ...] = ()
    max_top: int = MAX_TOP  # the largest $top, and the page size without one (8,000 for vulnerabilities)


@dataclass
class QueryOptions:
    filter: Callable[[dict], bool] | None = None
    orderby: list[tuple[str, bool]] = field(default_factory=list)  # (field, descending)
    top: int | None = None
    skip: int = 0
    select: list[str] | None = None
    expand: list[str] = field(default_factory=list)
    count: bool = False
    page_size: int = PAGE_SIZE


# ---------------------------------------------------------------------------------------------------------------
# Datetimes: stored as ISO strings; compared through a fixed-width UTC key (7 fractional digits, like .NET).
# ---------------------------------------------------------------------------------------------------------------
_ISO_RE = re.compile(
    r"^(\d{4})-(\d{2})-(\d{2})T(\d{2}):(\d{2})(?::(\d{2})(?:\.(\d{1,7}))?)?(Z|[+-]\d{2}:\d{2})?$", re.IGNORECASE
)


def parse_datetime(text: str) -> tuple[dt.datetime, int]:
    """Parse an OData/ISO 8601 datetime into (aware UTC datetime to the second, ticks of 100 ns)."""
    m = _ISO_RE.match(text.strip())
    if not m:
        raise ValueError(f"'{text}' is not a valid datetime")
    year, month, day, hour, minute, second, frac, tz = m.groups()
    value = dt.datetime(int(year), int(month), int(day), int(hour), int(minute), int(second or 0),
                        tzinfo=dt.timezone.utc)
    if tz and tz.upper() != "Z":
        sign = 1 if tz[0] == "+" else -1
        value -= sign * dt.timedelta(hours=int(tz[1:3]), minutes=int(tz[4:6]))
    return value, int((frac or "0").ljust(7, "0"))


def format_datetime(value: dt.datetime) -> str:
    """The service's timestamp format: UTC with 7 fractional digits, e.g. 2021-01-26T20:33:57.7220239Z."""
    return value.astimezone(dt.timezone.utc).replace(tzinfo=None).isoformat(timespec="microseconds") + "0Z"


def datetime_key(text: str | None) -> str | None:
    """A string that sorts like the instant (fixed width, UTC, 7 digits); stored values already have this form."""
    if text is None:
        return None
    if len(text) == 28 and text[-1] == "Z" and text[19] == ".":
        return text
    value, ticks = parse_datetime(text)
    return value.strftime("%Y-%m-%dT%H:%M:%S.") + f"{ticks:07d}Z"


# ---------------------------------------------------------------------------------------------------------------
# $filter
# ---------------------------------------------------------------------------------------------------------------
def _tokens(text: str) -> Iterable[Token]:
    """Lex; a one-element `in ('x')` becomes `in ('x',)`: OData allows it, the grammar wants the trailing comma."""
    tokens = list(ODataLexer().tokenize(text))
    for i in reversed(range(len(tokens))):
        if tokens[i].type != "IN":
            continue
        start = next((j for j in range(i + 1, len(tokens)) if tokens[j].type != "WS"), None)
        if start is None or tokens[start].type != "(":
            continue
        depth, has_comma = 0, False
        for end in range(start, len(tokens)):
            kind = tokens[end].type
            depth += (kind == "(") - (kind == ")")
            has_comma = has_comma or (kind == "," and depth == 1)
            if depth == 0:
                if not has_comma:
                    comma = Token()
                    comma.type = comma.value = ","
                    comma.lineno, comma.index = tokens[end].lineno, tokens[end].index
                    tokens.insert(end, comma)
                break
    return iter(tokens)


def parse_filter(text: str) -> ast._Node:
    try:
        return ODataParser().parse(_tokens(text))
    except odata_exceptions.ODataException as exc:
        raise ODataError(f"Invalid filter clause: {exc}") from exc
    except Exception as exc:  # the grammar may raise plain errors on odd input
        raise ODataError(f"Invalid filter clause: could not parse '{text}'") from exc


@dataclass
class _Value:
    """A compiled operand: its type, and either a constant or a getter over the current row."""

    type: str
    getter: Callable[[object], object] | None = None
    const: object = None
    name: str = ""

    @property
    def is_const(self) -> bool:
        return self.getter is None


_OPS = {
    ast.Eq: "eq", ast.NotEq: "ne", ast.Lt: "lt", ast.LtE: "le", ast.Gt: "gt", ast.GtE: "ge", ast.In: "in",
}
_EDM = {STR: "Edm.String", DATETIME: "Edm.DateTimeOffset", INT: "Edm.Int64", BOOL: "Edm.Boolean",
        "null": "null", "guid": "Edm.Guid", "float": "Edm.Double", STR_LIST: "Collection(Edm.String)",
        OBJ_LIST: "Collection", OBJ: "Complex"}


class _Compiler:
    def __init__(self, schema: Schema):
        self.schema = schema

    # scope: None at top level, or (variable name, element fields or None for a string element) inside a lambda
    def predicate(self, node: ast._Node, scope=None) -> Callable[[object], bool]:
        if isinstance(node, ast.BoolOp):
            left, right = self.predicate(node.left, scope), self.predicate(node.right, scope)
            if isinstance(node.op, ast.And):
                return lambda r: left(r) and right(r)
            return lambda r: left(r) or right(r)
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not):
            inner = self.predicate(node.operand, scope)
            return lambda r: not inner(r)
        if isinstance(node, ast.Compare):
            return self.compare(node, scope)
        if isinstance(node, ast.Call):
            return self.call(node, scope)
        if isinstance(node, ast.CollectionLambda):
            return self.collection_lambda(node, scope)
        value = self.value(node, scope)
        if value.type == BOOL:
            if value.is_const:
                return lambda r, c=bool(value.const): c
            get = value.getter
            return lambda r: get(r) is True
        raise ODataError(f"Invalid filter clause: expression of type {_EDM.get(value.type, value.type)} "
                         "is not a boolean condition")

    def value(self, node: ast._Node, scope=None) -> _Value:
        if isinstance(node, ast.Null):
            return _Value("null", const=None)
        if isinstance(node, ast.String):
            return _Value(STR, const=node.val)
        if isinstance(node, ast.Integer):
            return _Value(INT, const=int(node.val))
        if isinstance(node, ast.Float):
            return _Value("float", const=float(node.val))
        if isinstance(node, ast.Boolean):
            return _Value(BOOL, const=node.val.lower() == "true")
        if isinstance(node, ast.GUID):
            return _Value("guid", const=node.val)
        if isinstance(node, ast.DateTime):
            try:
                return _Value(DATETIME, const=datetime_key(node.val))
            except ValueError as exc:
                raise ODataError(f"Invalid filter clause: {exc}") from exc
        if isinstance(node, (ast.Date, ast.Time, ast.Duration)):
            raise ODataError(f"Invalid filter clause: literal '{node.val}' is not supported")
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
            inner = self.value(node.operand, scope)
            if inner.is_const and inner.type in (INT, "float"):
                return _Value(inner.type, const=-inner.const)
        if isinstance(node, ast.Identifier):
            name = node.full_name()
            if scope is not None:
                var, element_fields = scope
                if name == var:
                    if element_fields is not None:
                        raise ODataError(f"Invalid filter clause: '{var}' is an object; use '{var}/<property>'")
                    return _Value(STR, getter=lambda e: e, name=name)
                raise ODataError(f"Invalid filter clause: only the lambda variable '{var}' may be used in a lambda")
            ftype = self.schema.filterable.get(name)
            if ftype is None:
                raise ODataError(f"Invalid filter clause: filtering by '{name}' is not supported on "
                                 f"{self.schema.entity_set}")
            return _Value(ftype, getter=lambda r, n=name: r.get(n), name=name)
        if isinstance(node, ast.Attribute) and scope is not None:
            var, element_fields = scope
            owner = node.owner
            if isinstance(owner, ast.Identifier) and owner.full_name() == var and element_fields:
                ftype = element_fields.get(node.attr)
                if ftype is None:
                    raise ODataError(f"Invalid filter clause: unknown property '{node.attr}'")
                return _Value(ftype, getter=lambda e, n=node.attr: e.get(n), name=node.attr)
        if isinstance(node, ast.Attribute):
            raise ODataError("Invalid filter clause: navigation properties are not supported")
        if isinstance(node, ast.List):
            raise ODataError("Invalid filter clause: a list is only allowed after 'in'")
        raise ODataError(f"Invalid filter clause: unsupported expression {type(node).__name__}")

    @staticmethod
    def _check_types(op: str, left: _Value, right: _Value) -> None:
        numeric = {INT, "float"}
        if left.type == right.type or (left.type in numeric and right.type in numeric):
            if left.type in (STR_LIST, OBJ_LIST, OBJ):
                raise ODataError(f"Invalid filter clause: '{left.name}' is a collection; use {left.name}/any(...)")
            return
        if "null" in (left.type, right.type) and op in ("eq", "ne"):
            return
        raise ODataError("Invalid filter clause: A binary operator with incompatible types was detected. Found "
                         f"operand types '{_EDM.get(left.type, left.type)}' and "
                         f"'{_EDM.get(right.type, right.type)}' for operator kind '{op}'.")

    def compare(self, node: ast.Compare, scope) -> Callable[[object], bool]:
        op = _OPS[type(node.comparator)]
        left = self.value(node.left, scope)
        if op == "in":
            items = node.right.val if isinstance(node.right, ast.List) else [node.right]
            values = [self.value(item, scope) for item in items]
            for v in values:
                if not v.is_const:
                    raise ODataError("Invalid filter clause: 'in' needs a list of literals")
                self._check_types("in", left, v)
            keys = {self._key(left.type, v.const) for v in values}
            get, ltype = left.getter, left.type
            return lambda r: self._key(ltype, get(r)) in keys
        right = self.value(node.right, scope)
        self._check_types(op, left, right)
        if not left.is_const and right.is_const:
            return self._field_vs_const(op, left, right)
        if left.is_const and not right.is_const:
            flipped = {"lt": "gt", "le": "ge", "gt": "lt", "ge": "le"}.get(op, op)
            return self._field_vs_const(flipped, right, left)
        lget = left.getter or (lambda r, c=left.const: c)
        rget = right.getter or (lambda r, c=right.const: c)
        typ = left.type if left.type != "null" else right.type
        return lambda r: _apply(op, self._key(typ, lget(r)), self._key(typ, rget(r)))

    @staticmethod
    def _key(typ: str, value):
        if value is None:
            return None
        if typ in (STR, "guid"):
            return str(value).casefold()
        if typ == DATETIME:
            return datetime_key(value)
        return value

    def _field_vs_const(self, op: str, fld: _Value, lit: _Value) -> Callable[[object], bool]:
        get, typ = fld.getter, fld.type
        target = self._key(typ, lit.const)
        if target is None:  # eq null / ne null
            return (lambda r: get(r) is None) if op == "eq" else (lambda r: get(r) is not None)
        if op == "ne":
            if typ == STR:
                return lambda r: (v := get(r)) is None or v.casefold() != target
            if typ == DATETIME:
                return lambda r: (v := get(r)) is None or datetime_key(v) != target
            return lambda r: get(r) != target
        cmp = _OPERATORS[op]
        if typ == STR:
            return lambda r: (v := get(r)) is not None and cmp(v.casefold(), target)
        if typ == DATETIME:
            return lambda r: (v := get(r)) is not None and cmp(datetime_key(v), target)
        return lambda r: (v := get(r)) is not None and cmp(v, target)

    def call(self, node: ast.Call, scope) -> Callable[[object], bool]:
        name = node.func.full_name().lower()
        if name not in ("startswith", "endswith", "contains"):
            raise ODataError(f"Invalid filter clause: function '{node.func.full_name()}' is not supported")
        subject, needle = (self.value(arg, scope) for arg in node.args)
        if subject.type != STR or subject.is_const or needle.type != STR or not needle.is_const:
            raise ODataError(f"Invalid filter clause: {name}() takes a string property and a string literal")
        get, lit = subject.getter, needle.const.casefold()
        if name == "startswith":
            return lambda r: (v := get(r)) is not None and v.casefold().startswith(lit)
        if name == "endswith":
            return lambda r: (v := get(r)) is not None and v.casefold().endswith(lit)
        return lambda r: (v := get(r)) is not None and lit in v.casefold()

    def collection_lambda(self, node: ast.CollectionLambda, scope) -> Callable[[object], bool]:
        if scope is not None:
            raise ODataError("Invalid filter clause: nested lambda expressions are not supported")
        owner = node.owner
        name = owner.full_name() if isinstance(owner, ast.Identifier) else ""
        ftype = self.schema.filterable.get(name)
        if ftype not in (STR_LIST, OBJ_LIST):
            raise ODataError(f"Invalid filter clause: '{name}' is not a filterable collection")
        if node.lambda_ is None:
            if isinstance(node.operator, ast.All):
                return lambda r: True
            return lambda r: bool(r.get(name))
        element_fields = self.schema.sub_fields.get(name) if ftype == OBJ_LIST else None
        inner = self.predicate(node.lambda_.expression, (node.lambda_.identifier.name, element_fields))
        if isinstance(node.operator, ast.All):
            return lambda r: all(map(inner, r.get(name) or ()))
        return lambda r: any(map(inner, r.get(name) or ()))


_OPERATORS = {"eq": operator.eq, "ne": operator.ne, "lt": operator.lt, "le": operator.le, "gt": operator.gt,
              "ge": operator.ge}


def _apply(op: str, a, b) -> bool:
    if op in ("eq", "ne"):
        return _OPERATORS[op](a, b)
    return a is not None and b is not None and _OPERATORS[op](a, b)


def compile_filter(text: str, schema: Schema) -> Callable[[dict], bool]:
    return _Compiler(schema).predicate(parse_filter(text))


# ---------------------------------------------------------------------------------------------------------------
# Query options and paging
# ---------------------------------------------------------------------------------------------------------------
_KNOWN_OPTIONS = {"$filter", "$orderby", "$top", "$skip", "$select", "$expand", "$count", "$format"}


def _int_option(name: str, raw: str) -> int:
    try:
        value = int(raw)
    except ValueError:
        raise ODataError(f"Invalid value '{raw}' for {name} query option found.") from None
    if value < 0:
        raise ODataError(f"Invalid value '{raw}' for {name} query option found. The value must be non-negative.")
    return value


def parse_options(query: dict[str, str], schema: Schema) -> QueryOptions:
    """Validate and compile the `$` options of one request (query: parameter name -> first value)."""
    for name in query:
        if name.startswith("$") and name.lower() not in _KNOWN_OPTIONS:
            raise ODataError(f"The query parameter '{name}' is not supported.")
    q = {k.lower(): v for k, v in query.items() if k.startswith("$")}
    opts = QueryOptions(page_size=schema.max_top)
    if q.get("$filter", "").strip():
        opts.filter = compile_filter(q["$filter"], schema)
    if "$top" in q:
        opts.top = _int_option("$top", q["$top"])
        if opts.top > schema.max_top:
            raise ODataError(f"The limit of '{schema.max_top}' for Top query has been exceeded. "
                             f"The value from the incoming request is '{opts.top}'.")
    if "$skip" in q:
        opts.skip = _int_option("$skip", q["$skip"])
    if q.get("$orderby", "").strip():
        for part in q["$orderby"].split(","):
            words = part.split()
            if not words or len(words) > 2 or (len(words) == 2 and words[1].lower() not in ("asc", "desc")):
                raise ODataError(f"Invalid $orderby clause '{part.strip()}'.")
            if words[0] not in schema.fields or schema.filterable.get(words[0]) in (STR_LIST, OBJ_LIST):
                raise ODataError(f"Could not find a property named '{words[0]}' to order "
                                 f"{schema.entity_set} by.")
            opts.orderby.append((words[0], len(words) == 2 and words[1].lower() == "desc"))
    if q.get("$select", "").strip():
        opts.select = [s.strip() for s in q["$select"].split(",")]
        for name in opts.select:
            if name not in schema.fields and name not in schema.expandable:
                raise ODataError(f"Could not find a property named '{name}' on type "
                                 f"'microsoft.windowsDefenderATP.api.{schema.entity_set.rstrip('s')}'.")
    if q.get("$expand", "").strip():
        opts.expand = [s.strip() for s in q["$expand"].split(",")]
        for name in opts.expand:
            if name not in schema.expandable:
                raise ODataError(f"Could not find a navigation property named '{name}' to expand.")
    if "$count" in q:
        if q["$count"].lower() not in ("true", "false"):
            raise ODataError(f"Invalid value '{q['$count']}' for $count query option found.")
        opts.count = q["$count"].lower() == "true"
    return opts


def _sort_key(name: str):
    def key(row):
        v = row.get(name)
        if isinstance(v, str):
            v = v.casefold()
        return (v is not None, v if v is not None else 0)
    return key


def apply_options(rows: list[dict], opts: QueryOptions) -> tuple[list[dict], int, bool]:
    """Filter, sort and page. Returns (page, total matching, more_remaining_without_top)."""
    if opts.filter is not None:
        pred = opts.filter
        rows = [r for r in rows if pred(r)]
    for name, descending in reversed(opts.orderby):
        rows = sorted(rows, key=_sort_key(name), reverse=descending)
    total = len(rows)
    if opts.top is not None:
        return rows[opts.skip:opts.skip + opts.top], total, False
    page = rows[opts.skip:opts.skip + opts.page_size]
    return page, total, opts.skip + opts.page_size < total


def project(row: dict, opts: QueryOptions) -> dict:
    if opts.select is None:
        return row
    keep = set(opts.select)
    return {k: v for k, v in row.items() if k in keep}


def next_link(base_url: str, path: str, query: dict[str, str], skip: int) -> str:
    params = {k: v for k, v in query.items() if k.lower() != "$skip"}
    params["$skip"] = str(skip)
    return f"{base_url}{path}?" + urlencode(params, safe="$',()/:")
