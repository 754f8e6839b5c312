"""Pack the collection's engine (plugins/module_utils) as the `katalyst_colocation` package, reproducibly.

Usage: bundle_engine.py MODULE_UTILS_DIR OUT_DIR  ->  prints {"path": ..., "version": ...} as JSON.
The tarball's name carries a hash of its content, so nodes install a release only when the code
changed (an idempotent run transfers nothing), and the same code always gives the same bundle.
"""
import hashlib
import io
import json
import os
import sys
import tarfile

PACKAGE = "katalyst_colocation"


def engine_files(src):
    for dirpath, dirnames, filenames in os.walk(src):
        dirnames[:] = sorted(d for d in dirnames if d != "__pycache__")
        for name in sorted(filenames):
            if name.endswith(".py"):
                full = os.path.join(dirpath, name)
                yield full, os.path.join(PACKAGE, os.path.relpath(full, src))


def main(src, out_dir):
    files = list(engine_files(src))
    digest = hashlib.sha256()
    for full, arcname in files:
        digest.update(arcname.encode() + b"\0")
        with open(full, "rb") as handle:
            digest.update(handle.read())
    version = digest.hexdigest()[:16]
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, "katalyst-engine-%s.tar.gz" % version)
    if not os.path.exists(path):
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w:gz", format=tarfile.PAX_FORMAT) as tar:
            for full, arcname in files:
                info = tarfile.TarInfo(arcname)
                with open(full, "rb") as handle:
                    data = handle.read()
                info.size, info.mode, info.mtime = len(data), 0o644, 0
                tar.addfile(info, io.BytesIO(data))
        tmp = path + ".tmp"
        with open(tmp, "wb") as handle:
            handle.write(buffer.getvalue())
        os.replace(tmp, path)
    print(json.dumps({"path": path, "version": version, "files": len(files)}))


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    main(sys.argv[1], sys.argv[2])
