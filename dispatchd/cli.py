"""Command line: the only place that reads argv."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Sequence

from dispatchd import config as config_mod
from dispatchd.errors import ConfigError, StoreError

# sysexits.h: EX_CONFIG tells systemd and scripts the config, not the code, is wrong.
EXIT_CONFIG = 78
EXIT_UNAVAILABLE = 69


def _setup_logging() -> None:
    logging.basicConfig(
        level=logging.INFO,
        stream=sys.stderr,
        format="%(asctime)s level=%(levelname)s logger=%(name)s %(message)s",
    )


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dispatchd", description="SMS dispatch proxy.")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the daemon")
    serve.add_argument(
        "--config", help="config file (default $DISPATCHD_CONFIG or ./dispatchd.toml)"
    )
    sim = sub.add_parser("simulator", help="run the simulated providers as their own process")
    sim.add_argument("--config", help="config file whose [simulator] section to use")
    sim.add_argument("--host", default="127.0.0.1")
    sim.add_argument("--port", type=int, default=9090)
    return parser


def _load(path_arg: str | None) -> config_mod.Config:
    path = config_mod.config_path(path_arg)
    return config_mod.load(path, must_exist=path_arg is not None)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    _setup_logging()
    try:
        cfg = _load(args.config)
    except ConfigError as exc:
        print(f"dispatchd: configuration error: {exc.message}", file=sys.stderr)
        return EXIT_CONFIG
    if args.command == "serve":
        from dispatchd.daemon import serve

        try:
            return asyncio.run(serve(cfg))
        except StoreError as exc:
            print(f"dispatchd: {exc.message}", file=sys.stderr)
            return EXIT_UNAVAILABLE
        except OSError as exc:
            print(
                f"dispatchd: cannot listen on {cfg.server.host}:{cfg.server.port}: {exc.strerror}",
                file=sys.stderr,
            )
            return EXIT_UNAVAILABLE
    if args.command == "simulator":
        from aiohttp import web

        from dispatchd.simulator import SimulatorState, make_simulator_app

        app = make_simulator_app(SimulatorState(cfg.simulator))
        web.run_app(app, host=args.host, port=args.port, access_log=None)
        return 0
    return 2


if __name__ == "__main__":
    sys.exit(main())
