"""The store server; the defaults of ``agentemit serve`` live here so the CLI can show them without
importing the server (FastAPI and uvicorn take a while to import)."""

# Per client address. A pipeline sends one request per batch (100-1,000 spans), so 1,000 requests/s is
# 100,000+ spans/s, more than the server ingests (~60k spans/s with 1,000-span batches, BENCHMARKS.md),
# and one client asking sequentially gets ~630 requests/s of the cheapest query here: the limit stops
# a flood (or many workers behind one address gone wrong), never a working fleet. The multi-process
# test's four workers flush every 0.1 s (~40 requests/s); the burst absorbs a fleet replaying its spools.
DEFAULT_MAX_BODY_BYTES = 32 << 20
DEFAULT_RATE_LIMIT = 1_000.0
DEFAULT_RATE_BURST = 2_000
