"""Offline stand-in for ansible-test's get-pip bootstrap script.

ansible-test bootstraps pip into each test virtualenv by downloading get-pip-<version>.py from a host
these machines cannot reach. `make` copies this file to ~/.ansible/test/cache/get_pip_<version>.py next
to the matching pip wheel (taken from the package index), and ansible-test runs it instead.
"""
import glob
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
WHEELS = sorted(glob.glob(os.path.join(HERE, "pip-*-py3-none-any.whl")))
if not WHEELS:
    sys.exit("get_pip_offline: no pip wheel next to %s" % HERE)
sys.path.insert(0, WHEELS[-1])
ARGS = [arg for arg in sys.argv[1:] if arg not in ("--no-setuptools", "--no-wheel")]

from pip._internal.cli.main import main  # noqa: E402  pylint: disable=wrong-import-position

sys.exit(main(["install", "--upgrade", "--force-reinstall"] + ARGS))
