# Copyright: katalyst.colocation contributors
# Apache License 2.0 (see LICENSE)
"""The ``main()`` every katalyst daemon shares: ``python -m katalyst_colocation.daemons.<name> --config FILE``."""

from __future__ import annotations

import argparse
import sys

from . import service


def run_daemon(prog, load, argv=None, build=None, settle=None):
    """Run a daemon until SIGTERM or SIGINT; returns 2 when its configuration cannot be loaded.

    ``load(config_path)`` makes the daemon object, raising OSError or ValueError for a bad file (``prog: message`` on
    stderr). The object has ``config`` (with ``log_level`` and ``json_logs``), ``daemon`` (a service.Daemon),
    ``start()`` (serve and announce) and ``stop()``. ``build(obj)`` runs once logging is set up (its wiring logs),
    ``settle()`` once the daemon serves, before the loops wait."""
    parser = argparse.ArgumentParser(prog=prog)
    parser.add_argument("--config", required=True)
    args = parser.parse_args(argv)
    try:
        runner = load(args.config)
    except (OSError, ValueError) as exc:
        sys.stderr.write("%s: %s\n" % (prog, exc))
        return 2
    service.setup_logging(runner.config["log_level"], runner.config["json_logs"])
    if build is not None:
        build(runner)
    # before start(): a SIGHUP/SIGTERM that arrives once the daemon announces itself must find the handlers
    runner.daemon.install_signal_handlers()
    runner.start()
    if settle is not None:
        settle()
    runner.daemon.run_forever()
    runner.stop()
    return service.exit_cleanly(0)


def serve_health(runner, log, what, extra=None):
    """Serve ``runner.daemon``'s /healthz and /metrics on the configured address and say so; returns the port."""
    address = runner.config["listen_address"]
    port = runner.daemon.serve_http(address, int(runner.config["port"]))
    log.info("%s serving /healthz and /metrics on %s:%d", what, address, port, extra=extra)
    return port
