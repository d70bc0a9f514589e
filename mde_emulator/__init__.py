"""An HTTPS stand-in for Microsoft: Entra ID, the Cortex XSOAR oproxy, Azure IMDS and the Defender for Endpoint API.

Used by `make demo`, the end-to-end tests and the benchmarks. It shares no code with the plugin on purpose.

Start it with `mde-emulator --port 0 --ready-file PATH` (or `python -m mde_emulator`); the ready file has the URLs,
the CA bundle and fresh credentials. In Python: `with EmulatorServer(Options(...)) as srv: srv.info`.

Modules:
    __main__      command line, ready file, signals
    server        TLS server, route registry (ROUTE_MODULES), auth/permission checks, faults, counters
    identity      Entra ID (discovery, token, authorize), oproxy, IMDS; JWT issuing and validation
    odata         $filter (odata-query grammar compiled to predicates), $orderby, $top, $skip, $select, paging
    data          deterministic seed data and the in-memory store
    api_machines  machines, logon users, tags, findbyip, file/domain/user -> machines
    api_actions   response actions and their clock-driven lifecycle, machineactions, investigation packages
    api_alerts    alerts (also per machine), updates, create by reference, related entities, investigations
    admin         /admin endpoints (counters, faults, clock, alert generation) and the background alert stream
    clock         the controllable clock every time-dependent behaviour reads
    common        request helpers shared by the api_* modules (machine lookup, body rules, patterns)
    web           request/response/route types and the API error shape
"""

from .server import EmulatorServer, Options

__all__ = ["EmulatorServer", "Options"]
