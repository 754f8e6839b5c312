"""python -m sandbox.kubeapi --port 0 [--port-fallback] --state FILE --kubeconfig OUT [--pidfile F] [--request-log FILE]"""

import argparse
import logging
import os
import signal
import sys
import threading

from sandbox.kubeapi.server import KubeAPIServer, write_kubeconfig


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m sandbox.kubeapi", description="Kubernetes API emulator")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0: a free port")
    parser.add_argument("--port-fallback", action="store_true", help="serve on a free port when --port is taken instead of failing")
    parser.add_argument("--state", default=None, help="JSON file the objects are kept in across restarts")
    parser.add_argument("--kubeconfig", default=None, help="write a kubeconfig pointing at this server")
    parser.add_argument("--pidfile", default=None)
    parser.add_argument("--history-limit", type=int, default=10000)
    parser.add_argument("--tls-cert", default=None, help="serve HTTPS with this certificate (PEM)")
    parser.add_argument("--tls-key", default=None)
    parser.add_argument("--ca-file", default=None, help="CA bundle written into the kubeconfig (with --tls-cert)")
    parser.add_argument("--request-log", default=None,
                        help="append one JSON line per request (User-Agent, verb, group, resource, subresource, namespace, name) to this file")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    server = KubeAPIServer(state_file=args.state, host=args.host, port=args.port, history_limit=args.history_limit,
                           tls_cert=args.tls_cert, tls_key=args.tls_key, fallback_to_any_port=args.port_fallback,
                           request_log=args.request_log).start()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    if args.pidfile:
        with open(args.pidfile, "w") as handle:
            handle.write(str(os.getpid()))
    if args.kubeconfig:
        write_kubeconfig(args.kubeconfig, server.url, ca_file=args.ca_file)
    print("sandbox API emulator serving on %s%s" % (server.url, " (port %d is taken)" % args.port if server.port_taken else ""), flush=True)
    stop.wait()
    server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
