"""Polling for integration tests: things converge asynchronously (daemons, watches, the kernel)."""

import time


def wait_until(predicate, timeout=60.0, what="condition", interval=0.05, ignore=()):
    """Return as soon as ``predicate()`` is true; AssertionError naming ``what`` after ``timeout`` seconds.

    Exceptions listed in ``ignore`` count as "not yet" (a server still starting, say).
    """
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            if predicate():
                return
        except ignore:
            pass
        time.sleep(interval)
    raise AssertionError("timed out waiting for %s" % what)
