"""Command line: the only place that reads argv."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from dispatchd import config as config_mod
from dispatchd import logs
from dispatchd.domain.errors import ConfigError, ControlSocketError, StoreError

if TYPE_CHECKING:
    from dispatchd.devtools.simulator import SimulatorState

# sysexits.h: EX_CONFIG tells systemd and scripts the config, not the code, is wrong.
EXIT_CONFIG = 78
EXIT_UNAVAILABLE = 69


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
    bench.add_argument("--json", action="store_true", help="print the report as JSON")

    ceiling = sub.add_parser("bench-ceiling", help=argparse.SUPPRESS)
    ceiling.add_argument("--port", type=int, required=True)
    return parser


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
