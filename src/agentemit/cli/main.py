"""The ``agentemit`` command: argument parsing, dispatch, and one error policy for every subcommand.

Failures print one line on stderr and exit 2 (``AGENTEMIT_DEBUG=1`` shows the traceback instead);
``verify`` exits 1 for damaged rows and ``demo`` exits 1 when an event was lost.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import sys
from collections.abc import Sequence
from typing import Any, TextIO

from agentemit import __version__
from agentemit.cli.inspect_cmd import CliError
from agentemit.server import DEFAULT_MAX_BODY_BYTES, DEFAULT_RATE_BURST, DEFAULT_RATE_LIMIT
from agentemit.stores import TOKEN_ENV

DEBUG_ENV = "AGENTEMIT_DEBUG"
DEFAULT_LIST_LIMIT = 50


def _count(minimum: int) -> Any:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"{value} is below the minimum {minimum}")
        return value

    parse.__name__ = f"integer >= {minimum}"
    return parse


def _rate(text: str) -> float | None:
    """Requests per second (> 0), or 0 for no limit."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"{text} must be a finite number >= 0 (0 turns the limit off)")
    return value or None


def _add_store_args(parser: argparse.ArgumentParser, *, db_help: str) -> None:
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--db", metavar="PATH", help=db_help)
    where.add_argument("--store", metavar="URL", help="a store URL: sqlite:///x.db, postgresql://..., http://...")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="agentemit", description="Lossless event emission for LLM agents: demo, inspect, serve, verify."
    )
    parser.add_argument("--version", action="version", version=f"agentemit {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    demo = sub.add_parser("demo", help="run a simulated multi-threaded agent workload and check nothing was lost")
    _add_store_args(demo, db_help="SQLite file to write (default ./agentemit.db; kept across runs)")
    demo.add_argument("--rollouts", type=_count(1), default=20, help="rollouts to run (default 20)")
    demo.add_argument("--threads", type=_count(1), default=4, help="worker threads (default 4)")
    demo.add_argument("--seed", type=int, default=0, help="seed of the simulated agent (default 0)")

    inspect = sub.add_parser("inspect", help="list rollouts, or show one rollout's spans as a tree")
    _add_store_args(inspect, db_help="SQLite file to read (default ./agentemit.db)")
    inspect.add_argument("--rollout", metavar="ID", help="show this rollout's spans as a tree")
    inspect.add_argument("--attempt", metavar="ID|latest", help="only this attempt of --rollout")
    inspect.add_argument("--json", action="store_true", help="print JSON instead of text")
    inspect.add_argument(
        "--limit",
        type=_count(0),
        help=f"rollouts to list (the newest; default {DEFAULT_LIST_LIMIT}), or spans to show with --rollout",
    )

    serve = sub.add_parser("serve", help="serve a store over HTTP for many worker processes")
    serve.add_argument("--store", metavar="URL", required=True, help="the store to serve (e.g. runs.db)")
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    serve.add_argument("--port", type=_count(0), default=4747, help="port (default 4747)")
    serve.add_argument("--token", help=f"bearer token clients must send (default ${TOKEN_ENV})")
    serve.add_argument(
        "--rate-limit",
        type=_rate,
        default=DEFAULT_RATE_LIMIT,
        metavar="N",
        help=f"requests/s per client address; beyond it 429 with Retry-After (default {DEFAULT_RATE_LIMIT:g}; 0: off)",
    )
    serve.add_argument(
        "--rate-burst",
        type=_count(1),
        default=DEFAULT_RATE_BURST,
        metavar="N",
        help=f"requests a client may make at once before the rate applies (default {DEFAULT_RATE_BURST})",
    )
    serve.add_argument(
        "--max-body-bytes",
        type=_count(1),
        default=DEFAULT_MAX_BODY_BYTES,
        metavar="N",
        help=f"request body limit, compressed and decompressed, answered 413 (default {DEFAULT_MAX_BODY_BYTES})",
    )

    stats = sub.add_parser("stats", help="print a server's counters, or this process's pipeline counters")
    stats.add_argument("--url", help="an agentemit server, e.g. http://127.0.0.1:4747")
    stats.add_argument("--token", help=f"bearer token for --url (default ${TOKEN_ENV})")

    verify = sub.add_parser("verify", help="re-check every stored row against its checksum")
    _add_store_args(verify, db_help="SQLite file to check (default ./agentemit.db)")
    return parser


# --- commands ----------------------------------------------------------------------------------


def cmd_demo(args: argparse.Namespace, out: TextIO) -> int:
    from agentemit.cli.demo import print_report, run_demo

    report = run_demo(db=args.db, store_url=args.store, rollouts=args.rollouts, threads=args.threads, seed=args.seed)
    print_report(report, out)
    return 0 if report.ok else 1


def cmd_inspect(args: argparse.Namespace, out: TextIO) -> int:
    from agentemit.cli.inspect_cmd import inspect_rollout, inspect_rollouts, open_existing_store

    if args.attempt is not None and args.rollout is None:
        raise CliError("--attempt needs --rollout")
    store, label = open_existing_store(args.db, args.store)
    try:
        if args.rollout is None:
            limit = DEFAULT_LIST_LIMIT if args.limit is None else args.limit
            return inspect_rollouts(store, label, limit=limit, as_json=args.json, out=out)
        return inspect_rollout(store, args.rollout, args.attempt, limit=args.limit, as_json=args.json, out=out)
    finally:
        store.close()


def cmd_verify(args: argparse.Namespace, out: TextIO) -> int:
    from agentemit.cli.inspect_cmd import open_existing_store, verify

    store, label = open_existing_store(args.db, args.store)
    try:
        return verify(store, label, out=out)
    finally:
        store.close()


def cmd_serve(args: argparse.Namespace, out: TextIO) -> int:
    from agentemit.server.runner import serve

    serve(
        args.store,
        host=args.host,
        port=args.port,
        token=args.token,
        max_body_bytes=args.max_body_bytes,
        rate_limit_per_s=args.rate_limit,
        rate_burst=args.rate_burst,
    )
    return 0


def cmd_stats(args: argparse.Namespace, out: TextIO) -> int:
    if args.url is None:
        import agentemit

        data: Any = agentemit.stats()
    else:
        import httpx

        token = args.token or os.environ.get(TOKEN_ENV)
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        url = args.url.rstrip("/") + "/v1/stats"
        try:
            response = httpx.get(url, headers=headers, timeout=10.0)
        except httpx.HTTPError as exc:
            raise CliError(f"cannot reach {url}: {exc}") from exc
        if response.status_code != 200:
            raise CliError(f"{url} answered {response.status_code}: {response.text.strip()[:200]}")
        data = response.json()
    json.dump(data, out, indent=2, sort_keys=True, default=str)
    out.write("\n")
    return 0


COMMANDS = {"demo": cmd_demo, "inspect": cmd_inspect, "serve": cmd_serve, "stats": cmd_stats, "verify": cmd_verify}


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit code (0 ok, 1 lost events / damaged rows, 2 error or bad usage)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version, or a usage error argparse already printed
        return exc.code if isinstance(exc.code, int) else 2
    try:
        return COMMANDS[args.command](args, sys.stdout)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # the reader went away (e.g. `| head`): stop quietly, as shell tools do
        with contextlib.suppress(OSError, ValueError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit
        return 141
    except Exception as exc:
        if os.environ.get(DEBUG_ENV) == "1":
            raise
        message = str(exc) if isinstance(exc, CliError) else f"{type(exc).__name__}: {exc}"
        print(f"agentemit {args.command}: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
