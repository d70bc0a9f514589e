"""Advanced hunting: Microsoft Graph `runHuntingQuery` and the retiring Defender `advancedqueries/run`.

Both run real KQL (duckdb-kql translates it to DuckDB SQL) over the seeded Device* tables of `hunting_data`.
Each answers in its own shape: Graph `{"@odata.context", "schema": [{name, type}], "results"}`, Defender
`{"Schema": [{Name, Type}], "Results"}`. A query the engine cannot parse or run is a 400 carrying the parser's or
the binder's message, as Microsoft answers a bad query. Quota (calls or CPU), slow-query and result-size faults
come from `Faults` (`hunting_quota`, `hunting_slow_queries`, `hunting_max_rows`).
"""

from __future__ import annotations

import datetime as dt
import decimal
import json
import os
import re
import tempfile
import threading
import uuid
from typing import TYPE_CHECKING, Any

from .api_machines import check_body
from .hunting_data import TABLES, seed_rows, table_rows
from .odata import format_datetime
from .web import ApiError, Request, Response, Route, require_body

if TYPE_CHECKING:
    from .server import Emulator

GRAPH_ROLES = ("ThreatHunting.Read.All",)
DEFENDER_ROLES = ("AdvancedQuery.Read.All", "AdvancedQuery.Read")
RETENTION = dt.timedelta(days=30)
DUCK_TYPES = {"string": "VARCHAR", "datetime": "TIMESTAMPTZ", "long": "BIGINT", "int": "INTEGER", "bool": "BOOLEAN"}
DOTNET_TYPES = {"VARCHAR": "String", "TIMESTAMP WITH TIME ZONE": "DateTime", "TIMESTAMP": "DateTime",
                "DATE": "DateTime", "BIGINT": "Int64", "HUGEINT": "Int64", "INTEGER": "Int32", "SMALLINT": "Int16",
                "BOOLEAN": "Boolean", "DOUBLE": "Double", "FLOAT": "Double", "JSON": "Object", "UUID": "Guid",
                "INTERVAL": "TimeSpan"}
CPU_MESSAGE = ("You have exceeded processing resources allocated to this tenant. You can run queries again in "
               "{wait}.")
CALLS_MESSAGE = ("API calls quota exceeded! Maximum allowed 45 per 00:01:00 for the key Destination+TenantID+AppID. "
                 "You can send requests again in {seconds} seconds.")
TIMEOUT_MESSAGE = "Query exceeded the timeout period."
SIZE_MESSAGES = {"graph": "Result size limit exceeded. Use summarize, project or take to reduce the result size.",
                 "defender": "Query execution has exceeded the allowed result size. Optimize your query by limiting "
                             "the number of results and try again."}


class QueryError(Exception):
    """The query cannot run: a syntax error or one the engine reports while binding or executing."""


class HuntingEngine:
    """The Device* tables in an in-memory DuckDB, built on first use from the store."""

    def __init__(self, emu: Emulator):
        self.emu = emu
        self._lock = threading.Lock()
        self._con = None

    def _connection(self):
        with self._lock:
            if self._con is None:
                self._con = self._build()
            return self._con

    def _build(self):
        import duckdb_kql

        _teach_url_decode()
        con = duckdb_kql.connect()
        con.execute("CREATE SCHEMA seeded")
        rows = seed_rows(self.emu.store, self.emu.options.seed)
        for table, columns in TABLES.items():
            ddl = ", ".join(f'"{name}" {DUCK_TYPES[kind]}' for name, kind in columns)
            con.execute(f'CREATE TABLE seeded."{table}" ({ddl})')
            _load(con, table, rows[table])
        # Queries never need files or the network; KQL text must not reach either (DuckDB will not re-enable it).
        con.execute("SET enable_external_access = false")
        return con

    def run(self, query: str, start: dt.datetime, end: dt.datetime, now: dt.datetime,
            max_rows: int) -> tuple[list[tuple[str, str]], list[dict], bool]:
        """(columns as (name, .NET type), rows, truncated) for `query` over the rows stamped in [start, end]."""
        import duckdb
        import duckdb_kql

        cursor = self._connection().cursor()
        try:
            window = f"TIMESTAMPTZ '{start.isoformat()}' AND TIMESTAMPTZ '{end.isoformat()}'"
            for table in TABLES:
                cursor.execute(f'CREATE TEMP VIEW "{table}" AS SELECT * FROM seeded."{table}" '
                               f'WHERE "Timestamp" BETWEEN {window}')
            try:
                relation = duckdb_kql.kql(cursor, query, allow_write=False, query_now=now)
            except duckdb_kql.KqlError as exc:
                raise QueryError(_parser_message(exc)) from None
            if relation is None:
                raise QueryError("The query returned no table. Query operator expected.")
            columns = [(name, _dotnet_type(str(kind))) for name, kind in zip(relation.columns, relation.types, strict=True)]
            records = relation.limit(max_rows + 1).fetchall()
        except duckdb.Error as exc:
            raise QueryError(_engine_message(exc)) from None
        finally:
            cursor.close()
        truncated = len(records) > max_rows
        return columns, [{name: _json_value(value, kind) for (name, kind), value in zip(columns, record, strict=True)}
                         for record in records[:max_rows]], truncated


def _load(con, table: str, rows: list[dict]) -> None:
    """Bulk load through a newline-delimited JSON file (row-by-row inserts take seconds per thousand rows)."""
    if not rows:
        return
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as fh:
        for record in table_rows(table, rows):
            fh.write(json.dumps(record, default=_isoformat, separators=(",", ":")))
            fh.write("\n")
    try:
        con.execute(f"COPY seeded.\"{table}\" FROM '{fh.name}' (FORMAT json)")
    finally:
        os.unlink(fh.name)


def _isoformat(value: Any) -> str:
    return value.isoformat()


def _teach_url_decode() -> None:
    """duckdb-kql has no row for KQL's url_decode(); DuckDB has the same function natively."""
    from duckdb_kql.translate import functions

    if "url_decode" not in functions.SCALAR_FUNCTIONS:
        functions.SCALAR_FUNCTIONS["url_decode"] = functions.FunctionSpec("url_decode", "native", "url_decode({0})",
                                                                          (1,))


def _dotnet_type(duck_type: str) -> str:
    if duck_type.startswith("DECIMAL"):
        return "Decimal"
    if duck_type.endswith("[]") or duck_type.startswith(("STRUCT", "MAP")):
        return "Object"
    return DOTNET_TYPES.get(duck_type, "String")


def _json_value(value: Any, dotnet_type: str) -> Any:
    if isinstance(value, dt.datetime):
        return format_datetime(value if value.tzinfo else value.replace(tzinfo=dt.timezone.utc))
    if isinstance(value, decimal.Decimal):
        return float(value)
    if isinstance(value, dt.timedelta):
        return str(value)
    if dotnet_type == "Object" and isinstance(value, str):
        try:
            return json.loads(value)
        except ValueError:
            return value
    if isinstance(value, uuid.UUID):
        return str(value)
    return value


def _parser_message(exc: Exception) -> str:
    text = str(exc)
    if type(exc).__name__ == "KqlSyntaxError":
        return f"Query could not be parsed: {text}. Fix syntax errors in your query."
    return f"Query could not be run: {text}."


_MISSING_TABLE = re.compile(r"Table with name (\S+) does not exist")
_MISSING_COLUMN = re.compile(r'column[^"]*"([^"]+)"', re.IGNORECASE)


def _engine_message(exc: Exception) -> str:
    text = str(exc).splitlines()[0]
    table = _MISSING_TABLE.search(text)
    if table:
        return f"Failed to resolve table or column expression named '{table.group(1)}'"
    column = _MISSING_COLUMN.search(text)
    if type(exc).__name__ == "BinderException" and column:
        return f"Failed to resolve scalar expression named '{column.group(1)}'"
    return f"Query execution failed: {text}"


# -- Timespan (Graph) -------------------------------------------------------------------------------------------
_DURATION = re.compile(r"^P(?:(\d+)D)?(?:T(?:(\d+)H)?(?:(\d+)M)?(?:(\d+(?:\.\d+)?)S)?)?$", re.IGNORECASE)


def parse_duration(text: str) -> dt.timedelta | None:
    m = _DURATION.match(text.strip())
    if not m or text.strip().upper() in ("P", "PT"):
        return None
    days, hours, minutes, seconds = m.groups()
    return dt.timedelta(days=int(days or 0), hours=int(hours or 0), minutes=int(minutes or 0),
                        seconds=float(seconds or 0))


def _parse_instant(text: str) -> dt.datetime | None:
    try:
        value = dt.datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        return None
    return value if value.tzinfo else value.replace(tzinfo=dt.timezone.utc)


def timespan_window(timespan: str | None, now: dt.datetime) -> tuple[dt.datetime, dt.datetime]:
    """Graph's Timespan forms: duration, start/end, duration/end, start/duration, or one instant (to now)."""
    if not timespan:
        return now - RETENTION, now
    parts = timespan.split("/")
    if len(parts) == 1:
        duration, instant = parse_duration(parts[0]), _parse_instant(parts[0])
        if duration is not None:
            return now - duration, now
        if instant is not None:
            return instant, now
    elif len(parts) == 2:
        first, second = parts
        start, end = _parse_instant(first), _parse_instant(second)
        if start and end:
            return start, end
        if end and parse_duration(first) is not None:
            return end - parse_duration(first), end
        if start and parse_duration(second) is not None:
            return start, start + parse_duration(second)
    raise ApiError(400, "BadRequest", f"The Timespan '{timespan}' is not a valid ISO 8601 interval or duration, e.g. "
                                      "P30D, PT6H or 2024-02-01T08:00:00Z/2024-02-15T08:00:00Z.")


# -- faults ------------------------------------------------------------------------------------------------------
def _take_fault(emu: Emulator) -> ApiError | None:
    """The quota or slow-query answer the faults ask for on this call, if any (each use spends one)."""
    with emu.faults_lock:
        faults = emu.faults
        quota = faults.hunting_quota
        if quota and quota["count"] > 0:
            quota["count"] -= 1
            if quota["count"] <= 0:
                faults.hunting_quota = None
            wait = quota["retry_after"]
            message = (CPU_MESSAGE.format(wait=str(dt.timedelta(seconds=wait)).zfill(8)) if quota["kind"] == "cpu"
                       else CALLS_MESSAGE.format(seconds=wait))
            return ApiError(429, "TooManyRequests", message, headers={"Retry-After": str(wait)})
        if faults.hunting_slow_queries > 0:
            faults.hunting_slow_queries -= 1
            return ApiError(400, "BadRequest", TIMEOUT_MESSAGE)
    return None


def _engine(emu: Emulator) -> HuntingEngine:
    with emu.faults_lock:
        if getattr(emu, "hunting", None) is None:
            emu.hunting = HuntingEngine(emu)
    return emu.hunting


def _run(request: Request, query: Any, start: dt.datetime, end: dt.datetime, api: str):
    if not isinstance(query, str) or not query.strip():
        raise ApiError(400, "BadRequest", "The query is empty. Query operator expected.")
    fault = _take_fault(request.emu)
    if fault:
        raise fault
    max_rows = request.emu.faults.hunting_max_rows
    try:
        columns, rows, truncated = _engine(request.emu).run(query, start, end, request.emu.clock.utcnow(), max_rows)
    except QueryError as exc:
        raise ApiError(400, "BadRequest", str(exc)) from None
    if truncated:
        raise ApiError(400, "BadRequest", SIZE_MESSAGES[api])
    return columns, rows


# -- endpoints ---------------------------------------------------------------------------------------------------
def run_hunting_query(request: Request) -> Response:
    """POST /v1.0/security/runHuntingQuery {"Query", "Timespan"?} (names read case-insensitively, as Graph does)."""
    body = {k.lower(): v for k, v in require_body(request).items()}
    now = request.emu.clock.utcnow()
    start, end = timespan_window(body.get("timespan"), now)
    columns, rows = _run(request, body.get("query"), start, end, "graph")
    return Response.json(200, {
        "@odata.context": f"{request.emu.base_url}/v1.0/$metadata#microsoft.graph.security.huntingQueryResults",
        "schema": [{"name": name, "type": kind} for name, kind in columns],
        "results": rows,
    })


def run_advanced_query(request: Request) -> Response:
    """POST /api/advancedqueries/run {"Query"}: the last 30 days, Defender's PascalCase shape."""
    body = require_body(request)
    check_body(body, required=("Query",))
    now = request.emu.clock.utcnow()
    columns, rows = _run(request, body["Query"], now - RETENTION, now, "defender")
    return Response.json(200, {"Schema": [{"Name": name, "Type": kind} for name, kind in columns],
                               "Results": rows}, content_type="application/json; charset=utf-8")


ROUTES = [
    Route("POST", "/v1.0/security/runHuntingQuery", run_hunting_query, "graph", GRAPH_ROLES),
    Route("POST", "/api/advancedqueries/run", run_advanced_query, "hunting", DEFENDER_ROLES),
]
