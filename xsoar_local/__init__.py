"""Run an XSOAR-style integration (yml + py) outside XSOAR: runtime behind demistomock, state store and CLI."""
