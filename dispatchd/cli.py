"""Command line: the only place that reads argv."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from dispatchd import config as config_mod
from dispatchd import logs
from dispatchd.domain.errors import ConfigError, ControlSocketError, StoreError

if TYPE_CHECKING:
    from dispatchd.client import ApiError, Client
    from dispatchd.devtools.simulator import SimulatorState

# sysexits.h: EX_CONFIG tells systemd and scripts the config, not the code, is wrong.
EXIT_CONFIG = 78
EXIT_UNAVAILABLE = 69
# `send`: the daemon refused the message (4xx), refused the API key, or --wait ran out.
EXIT_DATAERR = 65
EXIT_NOPERM = 77
EXIT_TEMPFAIL = 75
# `backup`: the daemon is not running and its database file does not exist.
EXIT_NOINPUT = 66


def _setup_logging(level: str, fmt: str = "text") -> None:
    logs.setup(level, fmt)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dispatchd", description="SMS dispatch proxy.")
    sub = parser.add_subparsers(dest="command", required=True)
    config_help = "config file (default $DISPATCHD_CONFIG or ./dispatchd.toml)"
    serve = sub.add_parser("serve", help="run the daemon")
    serve.add_argument("--config", help=config_help)

    config_cmd = sub.add_parser("config", help="work with the configuration")
    config_sub = config_cmd.add_subparsers(dest="config_command", required=True)
    check = config_sub.add_parser(
        "check", help="validate the configuration without starting (exit 0, or 78 naming the key)"
    )
    check.add_argument("--config", help=config_help)

    unit = sub.add_parser("systemd-unit", help="print a systemd service unit for dispatchd")
    unit.add_argument("--config", help=config_help + "; read for the shutdown grace")
    unit.add_argument(
        "--config-file",
        help="config path the unit runs with (default /etc/dispatchd/dispatchd.toml)",
    )

    sim = sub.add_parser("simulator", help="run the simulated providers as their own process")
    sim.add_argument("--config", help=config_help + "; its [simulator] section is used")
    sim.add_argument("--host", default="127.0.0.1")
    sim.add_argument("--port", type=int, default=9090)
    sim.add_argument(
        "--instant",
        action="store_true",
        help="answer at once, never fail, report delivered at once, no faults (for benchmarks)",
    )
    sim.add_argument("--seed", type=int, help="seed the random source, so a run can be reproduced")
    sim.add_argument(
        "--smpp-port",
        type=int,
        help="also run the SMSC for the config's smpp providers on this port",
    )

    console = sub.add_parser("console", help="watch and steer a running daemon (Textual TUI)")
    console.add_argument("--config", help=config_help + "; used for [control] socket")
    console.add_argument("--socket", help="the daemon's control socket (overrides the config)")
    _operator_parsers(sub, config_help)
    _backup_parser(sub, config_help)

    bench = sub.add_parser("bench", help="measure throughput and latency")
    bench.add_argument("--url", help="bench a running daemon (accept phase only)")
    bench.add_argument("--concurrency", type=int, default=64, help="clients in flight")
    bench.add_argument("--duration", type=float, default=10.0, help="seconds per load phase")
    bench.add_argument("--requests", type=int, help="requests per load phase (overrides time)")
    bench.add_argument(
        "--e2e-duration", type=float, default=30.0, help="seconds of end-to-end load"
    )
    bench.add_argument(
        "--backlog", type=int, default=0, help="messages stored before the backlog phase"
    )
    bench.add_argument(
        "--delivery-concurrency", type=int, default=128, help="the daemon's [delivery] concurrency"
    )
    bench.add_argument(
        "--watchers",
        type=int,
        default=0,
        help="repeat the end-to-end phase with this many live-status watchers",
    )
    bench.add_argument(
        "--watch-with",
        choices=["events", "poll", "idle"],
        default="events",
        help="how watchers follow messages: Server-Sent Events, long polling, or idle "
        "(streams held open on messages scheduled for later)",
    )
    bench.add_argument(
        "--backup",
        action="store_true",
        help="accept load while a backup of the daemon's database runs (after the backlog "
        "phase, so --backlog sets how much there is to copy)",
    )
    bench.add_argument(
        "--purge",
        type=int,
        default=0,
        help="accept load while retention purges this many old delivered messages (seeded "
        "first; the daemon's first purge cycle comes a minute after it starts)",
    )
    bench.add_argument("--json", action="store_true", help="print the report as JSON")

    ceiling = sub.add_parser("bench-ceiling", help=argparse.SUPPRESS)
    ceiling.add_argument("--port", type=int, required=True)
    return parser


def _operator_parsers(sub: argparse._SubParsersAction[Any], config_help: str) -> None:
    """`send` and `status`: the operator's shell tools, clients of a running daemon."""
    send = sub.add_parser(
        "send",
        help="send one message through a running daemon and print its id (a smoke test)",
        description="Exit 0 when accepted (with --wait: delivered); 1 when it ended otherwise; "
        "65 refused; 77 bad API key; 75 --wait timed out; 69 daemon unreachable.",
    )
    send.add_argument("to", metavar="TO", help="the recipient's number")
    send.add_argument("text", metavar="TEXT", help="the message")
    send.add_argument("--config", help=config_help + "; its [server] gives the default URL")
    send.add_argument("--url", help="the daemon's HTTP API (default from [server] host and port)")
    send.add_argument(
        "--api-key",
        help="API key (default $DISPATCHD_API_KEY, better: argv is visible to other users)",
    )
    send.add_argument(
        "--wait", action="store_true", help="follow it to a final status, one line per change"
    )
    send.add_argument(
        "--timeout", type=float, default=120.0, help="seconds --wait waits (default 120)"
    )

    status = sub.add_parser("status", help="a one-screen summary of a running daemon")
    status.add_argument("--config", help=config_help + "; used for [control] socket")
    status.add_argument("--socket", help="the daemon's control socket (overrides the config)")
    status.add_argument("--json", action="store_true", help="print the raw snapshot as JSON")


def _load(path_arg: str | None) -> config_mod.Config:
    path = config_mod.config_path(path_arg)
    return config_mod.load(path, must_exist=path_arg is not None)


def _serve(cfg: config_mod.Config, path: Path) -> int:
    from dispatchd.daemon import serve

    try:
        return asyncio.run(serve(cfg, path))
    except ConfigError as exc:
        # Checks that need more than the file: API keys from `keys_file`, exposure.
        print(f"dispatchd: configuration error: {exc.message}", file=sys.stderr)
        return EXIT_CONFIG
    except (StoreError, ControlSocketError) as exc:
        print(f"dispatchd: {exc.message}", file=sys.stderr)
        return EXIT_UNAVAILABLE
    except OSError as exc:
        print(
            f"dispatchd: cannot listen on {cfg.server.host}:{cfg.server.port}: {exc.strerror}",
            file=sys.stderr,
        )
        return EXIT_UNAVAILABLE


def _simulator(cfg: config_mod.Config, args: argparse.Namespace) -> int:
    import random

    from dispatchd.devtools.simulator import SimulatorState

    settings = cfg.simulator
    if args.instant:
        # Every fault key back to its default (off), then the instant answers on top.
        faults = config_mod.SimulatorConfig().model_dump(
            exclude={"enabled", "failure_rate", "latency", "callback_delay"}
        )
        settings = config_mod.SimulatorConfig.model_validate(
            {
                **settings.model_dump(),
                **faults,
                "latency": 0.0,
                "callback_delay": 0.0,
                "failure_rate": 0.0,
                "delivered": 1.0,
                "failed": 0.0,
                "invalid": 0.0,
                "invalid_suffix": "",
            }
        )
    rng = random.Random(args.seed) if args.seed is not None else None
    state = SimulatorState(settings, rng)
    return asyncio.run(_run_simulator(state, cfg, args))


async def _run_simulator(
    state: SimulatorState, cfg: config_mod.Config, args: argparse.Namespace
) -> int:
    """Serve every provider dialect (and the SMSC with --smpp-port) until SIGTERM/SIGINT."""
    import signal

    from aiohttp import web

    from dispatchd.devtools import dialects

    app = dialects.simulator_app(state, cfg.providers)
    # A stand-in provider owes nobody a graceful drain: requests it holds (slow or hanging
    # faults) are cut after a second rather than keeping SIGTERM waiting for a minute.
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
    await runner.setup()
    smsc = None
    try:
        await web.TCPSite(runner, args.host, args.port).start()
        if args.smpp_port is not None:
            smsc = dialects.smsc(state, cfg.providers, args.smpp_port, host=args.host)
            await smsc.start()
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
    finally:
        if smsc is not None:
            await smsc.stop()
        await runner.cleanup()
    return 0


def _check(cfg: config_mod.Config, path: Path) -> int:
    """`config check`: what `serve` would refuse, without starting anything."""
    from dispatchd.http import auth
    from dispatchd.providers import registry

    try:
        keys = auth.load_keys(cfg.api)
        auth.check_exposure(keys, cfg.server.host)
        for provider in cfg.providers:
            registry.check(provider)
    except ConfigError as exc:
        print(f"dispatchd: configuration error: {exc.message}", file=sys.stderr)
        return EXIT_CONFIG
    kinds = ", ".join(f"{p.name} ({p.kind})" for p in cfg.providers)
    print(f"{path}: ok; providers: {kinds}")
    return 0


def _console(socket_path: Path) -> int:
    # Imported here so that `serve` never loads Textual.
    from dispatchd.console.app import run

    return run(socket_path)


def _operator(args: argparse.Namespace) -> int:
    """`send` and `status`. The config only says where the daemon is, so with --url or
    --socket it is not read at all (an operator's host may have none)."""
    target: str | None = args.url if args.command == "send" else args.socket
    if not target:
        try:
            cfg = _load(args.config)
        except ConfigError as exc:
            print(f"dispatchd: configuration error: {exc.message}", file=sys.stderr)
            return EXIT_CONFIG
        if args.command == "status":
            target = str(cfg.control_socket)
        elif cfg.server.port == 0:
            print("dispatchd: [server] port is 0 (picked at start); pass --url", file=sys.stderr)
            return 2
        else:
            target = _local_url(cfg.server)
    if args.command == "status":
        return _status(Path(target), as_json=args.json)
    return _send(args, target)


def _local_url(server: config_mod.ServerConfig) -> str:
    """The API's URL from this host: a wildcard listener is reached on loopback."""
    host = "127.0.0.1" if server.host in ("0.0.0.0", "::", "") else server.host
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{server.port}"


def _send(args: argparse.Namespace, url: str) -> int:
    import aiohttp

    from dispatchd.client import ApiError

    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        print(f"dispatchd: --url {url!r} is not an http(s) URL", file=sys.stderr)
        return 2
    api_key = args.api_key or os.environ.get("DISPATCHD_API_KEY") or None
    try:
        return asyncio.run(_send_and_follow(args, url, api_key))
    except KeyboardInterrupt:
        return 130  # 128 + SIGINT, as a shell reports it
    except ApiError as exc:
        return _refused(exc)
    except (aiohttp.ClientError, TimeoutError, OSError) as exc:
        print(f"dispatchd: cannot reach the daemon at {url}: {_reason(exc)}", file=sys.stderr)
        return EXIT_UNAVAILABLE
    except (ValueError, KeyError, TypeError) as exc:
        # Something answered that is not dispatchd (or a version whose answer this one
        # cannot read): unusable all the same.
        print(f"dispatchd: unexpected answer from {url}: {exc!r}", file=sys.stderr)
        return EXIT_UNAVAILABLE


def _reason(exc: BaseException) -> str:
    """An OS error as its errno's words ("Connection refused"), not asyncio's wrapping."""
    if isinstance(exc, TimeoutError):
        return "no answer in time"
    errno = getattr(exc, "errno", None)
    if isinstance(errno, int) and errno > 0:
        return os.strerror(errno)
    return getattr(exc, "strerror", None) or str(exc) or type(exc).__name__


async def _send_and_follow(args: argparse.Namespace, url: str, api_key: str | None) -> int:
    from dispatchd.client import Client

    async with Client(url, api_key=api_key) as client:
        msg = await client.send(args.to, args.text)
        print(msg.id, flush=True)
        if not args.wait:
            return 0
        seen: list[str] = []
        try:
            async with asyncio.timeout(args.timeout) as scope:
                await _follow(client, msg.id, seen)
        except TimeoutError:
            if not scope.expired():
                raise
            # Not "unknown" for nothing seen yet: that is a status of its own.
            where = f"is still {seen[-1]}" if seen else "has shown no status"
            print(f"dispatchd: {msg.id} {where} after {args.timeout:g}s", file=sys.stderr)
            return EXIT_TEMPFAIL
        if seen[-1] == "delivered":
            return 0
        final = await client.get(msg.id)
        error = ": ".join(x for x in (final.error_code, final.error_detail) if x)
        print(f"dispatchd: {msg.id} ended {final.status}: {error or 'no detail'}", file=sys.stderr)
        return 1


async def _follow(client: Client, msg_id: str, seen: list[str]) -> None:
    """Print each status change of the message until a final one; `seen` keeps them."""
    last_event: int | None = None
    while True:
        async for event in client.events(msg_id, last_event_id=last_event):
            last_event = event.event_id
            if not seen or event.status != seen[-1]:
                seen.append(event.status)
                print(event.status, flush=True)
            if event.final:
                return
        # The stream ended early: the daemon is shutting down. Resume after the last
        # event; a daemon that is gone fails the reconnect and the command with it.


def _refused(exc: ApiError) -> int:
    print(f"dispatchd: refused ({exc.status} {exc.code}): {exc.detail}", file=sys.stderr)
    for field in exc.errors:
        # The detail usually spells the field errors out already.
        if field.message not in exc.detail:
            print(f"  {field.field}: {field.message}", file=sys.stderr)
    if exc.status in (401, 403):
        return EXIT_NOPERM
    if exc.status >= 500:
        return EXIT_UNAVAILABLE
    return EXIT_DATAERR


def _status(socket_path: Path, *, as_json: bool) -> int:
    from dispatchd.control.client import CommandFailed, ControlClient, DaemonUnavailable
    from dispatchd.control.summary import render

    async def fetch() -> dict[str, Any]:
        control = ControlClient(socket_path)
        try:
            return await control.snapshot()
        finally:
            await control.close()

    try:
        snapshot = asyncio.run(fetch())
    except DaemonUnavailable as exc:
        reason = _reason(exc.__cause__) if exc.__cause__ is not None else exc.message
        print(f"dispatchd: no daemon answers on {socket_path}: {reason}", file=sys.stderr)
        return EXIT_UNAVAILABLE
    except CommandFailed as exc:
        print(f"dispatchd: the daemon on {socket_path}: {exc.message}", file=sys.stderr)
        return EXIT_UNAVAILABLE
    sys.stdout.write(json.dumps(snapshot, indent=2) + "\n" if as_json else render(snapshot))
    return 0


def _backup_parser(sub: argparse._SubParsersAction[Any], config_help: str) -> None:
    backup = sub.add_parser(
        "backup",
        help="write a consistent copy of the database, whether the daemon runs or not",
        description="A running daemon (found on [control] socket) writes the copy itself, "
        "accepting all the while; a stopped one's database is copied here, under its lock. "
        "Exit 0 when the copy is complete and passed PRAGMA integrity_check; 66 no daemon "
        "and no database file; 69 the copy failed, or a daemon holds the database but does "
        "not answer on its socket; 78 configuration error.",
    )
    backup.add_argument(
        "dest",
        metavar="DEST",
        help="the backup file (replaced only by a complete copy), or a directory for a "
        "dispatchd-YYYYmmddTHHMMSSZ.db in it",
    )
    backup.add_argument("--config", help=config_help + "; gives the database and the socket")


def _backup(cfg: config_mod.Config, dest_arg: str) -> int:
    """`backup`: through the daemon when one answers, else in this process under the lock."""
    from dispatchd.control.client import CommandFailed, DaemonUnavailable
    from dispatchd.domain.errors import StoreLocked
    from dispatchd.store.sqlite.backup import copy_offline

    # Joined rather than resolved: a trailing slash still says "a directory".
    dest = dest_arg if os.path.isabs(dest_arg) else os.path.join(os.getcwd(), dest_arg)
    socket_path, db = cfg.control_socket, cfg.storage.path
    try:
        done = asyncio.run(_backup_through_daemon(socket_path, dest))
        how = "by the running daemon"
        if done is None:
            if not db.exists():
                print(
                    f"dispatchd: no daemon answers on {socket_path} and there is no database "
                    f"at {db}: nothing to back up",
                    file=sys.stderr,
                )
                return EXIT_NOINPUT
            done = copy_offline(db, dest).as_dict()
            how = "offline (no daemon running)"
    except KeyboardInterrupt:
        return 130
    except StoreLocked:
        print(
            f"dispatchd: a dispatchd process holds {db}, but nothing answers on its control "
            f"socket {socket_path}; not copying a database another process owns (is its "
            "[control] socket elsewhere?)",
            file=sys.stderr,
        )
        return EXIT_UNAVAILABLE
    except (StoreError, CommandFailed, DaemonUnavailable) as exc:
        print(f"dispatchd: backup failed: {exc.message}", file=sys.stderr)
        return EXIT_UNAVAILABLE
    print(
        f"{done['path']}: {done['bytes'] / 1e6:,.1f} MB, {done['messages']:,} messages, "
        f"copied in {done['seconds']:.1f} s {how}; integrity_check {done['integrity']}"
    )
    return 0


async def _backup_through_daemon(socket_path: Path, dest: str) -> dict[str, Any] | None:
    """The daemon's answer, or None when no daemon answers on the socket."""
    from dispatchd.control.client import ControlClient, DaemonUnavailable

    control = ControlClient(socket_path)
    try:
        try:
            await control.snapshot()
        except DaemonUnavailable:
            return None
        # From here a failure is the backup's, not a sign that no daemon runs.
        return await control.backup(dest)
    finally:
        await control.close()


def _bench(args: argparse.Namespace) -> int:
    from dispatchd.devtools import bench

    opts = bench.BenchOptions(
        url=args.url,
        concurrency=args.concurrency,
        duration=None if args.requests else args.duration,
        requests=args.requests,
        e2e_duration=args.e2e_duration,
        backlog=args.backlog,
        delivery_concurrency=args.delivery_concurrency,
        watchers=args.watchers,
        watch_with=args.watch_with,
        backup=args.backup,
        purge=args.purge,
    )
    return bench.main(opts, as_json=args.json)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "bench":
        _setup_logging("warning")
        return _bench(args)
    if args.command == "bench-ceiling":
        from dispatchd.devtools import bench

        bench.run_ceiling(args.port)
        return 0
    if args.command in ("send", "status"):
        return _operator(args)
    if args.command == "console" and args.socket:
        return _console(Path(args.socket))
    try:
        cfg = _load(args.config)
    except ConfigError as exc:
        _setup_logging("info")
        print(f"dispatchd: configuration error: {exc.message}", file=sys.stderr)
        return EXIT_CONFIG
    if args.command == "console":
        return _console(cfg.control_socket)
    _setup_logging(cfg.log.level, cfg.log.format)
    if args.command == "serve":
        return _serve(cfg, config_mod.config_path(args.config))
    if args.command == "backup":
        return _backup(cfg, args.dest)
    if args.command == "systemd-unit":
        from dispatchd.systemd import unit_file

        config_file = args.config_file or "/etc/dispatchd/dispatchd.toml"
        # systemd waits the drain time plus a margin before it sends SIGKILL.
        print(unit_file(config=config_file, stop_timeout=cfg.server.shutdown_grace + 10), end="")
        return 0
    if args.command == "simulator":
        return _simulator(cfg, args)
    if args.command == "config":
        return _check(cfg, config_mod.config_path(args.config))
    return 2


if __name__ == "__main__":
    sys.exit(main())
