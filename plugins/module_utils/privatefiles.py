# Copyright: katalyst.colocation contributors
# Apache License 2.0 (see LICENSE)
"""Secrets on the host's disk: files 0600 under 0700 directories, replaced atomically (a reader never sees half a
token). Used by the module that issues a daemon's credential and by the daemon that renews its own token."""

from __future__ import annotations

import os
import tempfile

PRIVATE_FILE = 0o600
PRIVATE_DIR = 0o700


def make_private_dirs(path):
    """Create the missing directories above ``path`` with mode 0700 (whatever the umask); returns those created."""
    missing = []
    parent = os.path.dirname(os.path.abspath(path))
    while parent and not os.path.isdir(parent):
        missing.append(parent)
        parent = os.path.dirname(parent)
    for directory in reversed(missing):
        os.mkdir(directory, PRIVATE_DIR)
        os.chmod(directory, PRIVATE_DIR)
    return missing


def write_private(path, text):
    """Replace ``path`` atomically with ``text``: a temporary file in the same directory, mode 0600 from the first byte,
    renamed over it; missing directories are created 0700. Used by the module that issues a token and the daemon that
    renews its own."""
    make_private_dirs(path)
    handle, temporary = tempfile.mkstemp(dir=os.path.dirname(os.path.abspath(path)), prefix=".%s." % os.path.basename(path))
    try:
        with os.fdopen(handle, "w") as stream:
            stream.write(text)
            stream.flush()
            os.fsync(stream.fileno())
        os.chmod(temporary, PRIVATE_FILE)
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.unlink(temporary)
        raise
