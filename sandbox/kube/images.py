"""The container images of the real kubelet node, built here: no registry is reachable from the test bed.

    python -m sandbox.kube.images build  [--out-dir DIR]
    python -m sandbox.kube.images import --address SOCK [--namespace k8s.io] [--ctr ctr] [--out-dir DIR]

Two single-layer linux images, written as OCI image-layout tarballs that `ctr images import` reads:

- ``katalyst.local/pause:1`` (PAUSE_IMAGE): only ``/pause``, the katalyst-workload binary (sandbox/kube/images/workload,
  a multi-call Go program that runs its ``pause`` subcommand under that name); entrypoint ``["/pause"]``.
- ``katalyst.local/workload:1`` (WORKLOAD_IMAGE): Debian's static busybox as ``/bin/busybox`` with a symlink per applet,
  ``/bin/katalyst-workload``, ``/etc/passwd`` and ``/etc/group`` (root, nobody), ``/tmp`` (1777); cmd ``["/bin/sh"]``.

No docker or buildah: the layers are tar files written by this module, deterministic (sorted entries, mtime 0,
uid/gid 0, uncompressed, so the layer digest is its diff_id) and the Go binary is built with -trimpath, no VCS
stamp and an empty build id, so the same inputs give the same image digests on every build. A build goes to
``.build/images/<key>/`` where key is a hash of the inputs (the Go module's files, the busybox binary, the Go
version, this file); a build with the same key is reused as it is, a new one removes the older ones.

containerd 1.6 (`ctr images import`, and its CRI plugin, which picks the imported images up at once by their names)
names an image after the manifest's ``io.containerd.image.name`` annotation as written: no ``docker.io/`` is added.
The kubelet asks for the name normalised (``pause:1`` would be ``docker.io/library/pause:1``), hence a registry-like
domain with a dot, ``katalyst.local``, which normalises to itself.
"""

import argparse
import fcntl
import hashlib
import io
import json
import os
import platform
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
WORKLOAD_SRC = os.path.join(REPO, "sandbox", "kube", "images", "workload")
DEFAULT_OUT_DIR = os.path.join(REPO, ".build", "images")
BUSYBOX = "/bin/busybox"  # Debian's busybox-static: no shared libraries to carry into the image
PAUSE_IMAGE = "katalyst.local/pause:1"
WORKLOAD_IMAGE = "katalyst.local/workload:1"
TARBALLS = {PAUSE_IMAGE: "pause.tar", WORKLOAD_IMAGE: "workload.tar"}
BUILD_INFO = "build.json"  # written last, before the directory is renamed into place: its presence means complete

MEDIA_INDEX = "application/vnd.oci.image.index.v1+json"
MEDIA_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MEDIA_CONFIG = "application/vnd.oci.image.config.v1+json"
MEDIA_LAYER = "application/vnd.oci.image.layer.v1.tar"
ANNOTATION_REF_NAME = "org.opencontainers.image.ref.name"
# containerd's importer names the image after this annotation as it is; without it `ctr images import` would make
# "import-<date>:1" out of the OCI ref name, or drop a full reference that does not start with that prefix.
ANNOTATION_CONTAINERD_NAME = "io.containerd.image.name"
EPOCH = "1970-01-01T00:00:00Z"
GOARCH = {"x86_64": "amd64", "aarch64": "arm64"}

PASSWD = "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n"
GROUP = "root:x:0:\nnobody:x:65534:\n"


def find_go():
    """The go command: on PATH, else where Go's official tarball installs it (as sandbox/kube/build.sh looks)."""
    found = shutil.which("go")
    if found:
        return found
    if os.access("/usr/local/go/bin/go", os.X_OK):
        return "/usr/local/go/bin/go"
    raise RuntimeError("go is not on PATH (nor in /usr/local/go/bin): needed to build %s" % WORKLOAD_SRC)


def architecture():
    """The image architecture (Go's GOARCH) of this host, whose busybox goes into the image."""
    machine = platform.machine()
    if machine not in GOARCH:
        raise RuntimeError("unsupported machine %r: the images carry this host's busybox" % machine)
    return GOARCH[machine]


def go_env(arch):
    """The Go build environment, pinned so that the binary does not depend on the caller's environment."""
    env = dict(os.environ, CGO_ENABLED="0", GOOS="linux", GOARCH=arch, GOFLAGS="", GOEXPERIMENT="")
    if arch == "amd64":
        env["GOAMD64"] = "v1"
    return env


def _sha256_file(path):
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def inputs(go, arch):
    """What the images are made of, each as a hash (and the Go version): the build key is their hash."""
    sources = {}
    for folder, dirs, files in os.walk(WORKLOAD_SRC):
        dirs.sort()
        for name in sorted(files):
            path = os.path.join(folder, name)
            sources[os.path.relpath(path, WORKLOAD_SRC)] = _sha256_file(path)
    if not os.access(BUSYBOX, os.X_OK):
        raise RuntimeError("%s is missing: install Debian's busybox-static (listed in .ci/apt-packages.txt)" % BUSYBOX)
    version = subprocess.run([go, "env", "GOVERSION"], cwd=WORKLOAD_SRC, env=go_env(arch), check=True,
                             capture_output=True, text=True).stdout.strip()
    return {"workload_sources": sources, "busybox_sha256": _sha256_file(BUSYBOX), "go_version": version,
            "images_py_sha256": _sha256_file(os.path.abspath(__file__)), "architecture": arch}


def _canonical_json(obj):
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


def _tar(entries):
    """A tar file of ``entries`` (path -> ("dir", mode) | ("file", mode, bytes) | ("symlink", target)), deterministic:
    parents before children in sorted order, mtime 0, owned by 0:0."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for path in sorted(entries, key=lambda p: p.split("/")):
            kind = entries[path]
            info = tarfile.TarInfo(path)
            info.mtime, info.uid, info.gid, info.uname, info.gname = 0, 0, 0, "root", "root"
            data = None
            if kind[0] == "dir":
                info.type, info.mode = tarfile.DIRTYPE, kind[1]
            elif kind[0] == "symlink":
                info.type, info.mode, info.linkname = tarfile.SYMTYPE, 0o777, kind[1]
            else:
                info.mode, data = kind[1], kind[2]
                info.size = len(data)
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return buffer.getvalue()


def _descriptor(media_type, data, **extra):
    return dict(extra, mediaType=media_type, digest="sha256:" + hashlib.sha256(data).hexdigest(), size=len(data))


def oci_archive(name, arch, layer, config):
    """An OCI image-layout tar of one single-layer image; returns (tar bytes, manifest descriptor)."""
    diff_id = "sha256:" + hashlib.sha256(layer).hexdigest()
    config_blob = _canonical_json({
        "architecture": arch, "os": "linux", "created": EPOCH, "config": config,
        "rootfs": {"type": "layers", "diff_ids": [diff_id]},
        "history": [{"created": EPOCH, "created_by": "sandbox/kube/images.py"}],
    })
    manifest_blob = _canonical_json({
        "schemaVersion": 2, "mediaType": MEDIA_MANIFEST,
        "config": _descriptor(MEDIA_CONFIG, config_blob),
        "layers": [_descriptor(MEDIA_LAYER, layer)],
    })
    manifest = _descriptor(MEDIA_MANIFEST, manifest_blob, platform={"architecture": arch, "os": "linux"},
                           annotations={ANNOTATION_CONTAINERD_NAME: name, ANNOTATION_REF_NAME: name.rsplit(":", 1)[1]})
    index_blob = _canonical_json({"schemaVersion": 2, "mediaType": MEDIA_INDEX, "manifests": [manifest]})
    entries = {"blobs": ("dir", 0o755), "blobs/sha256": ("dir", 0o755),
               "oci-layout": ("file", 0o644, _canonical_json({"imageLayoutVersion": "1.0.0"})),
               "index.json": ("file", 0o644, index_blob)}
    for blob in (layer, config_blob, manifest_blob):
        entries["blobs/sha256/" + hashlib.sha256(blob).hexdigest()] = ("file", 0o644, blob)
    return _tar(entries), manifest


def pause_layer(workload_binary):
    return _tar({"pause": ("file", 0o755, workload_binary)})


def workload_layer(workload_binary, busybox, applets):
    entries = {"bin": ("dir", 0o755), "etc": ("dir", 0o755), "root": ("dir", 0o700), "tmp": ("dir", 0o1777),
               "bin/busybox": ("file", 0o755, busybox),
               "bin/katalyst-workload": ("file", 0o755, workload_binary),
               "etc/passwd": ("file", 0o644, PASSWD.encode()),
               "etc/group": ("file", 0o644, GROUP.encode()),
               "etc/hostname": ("file", 0o644, b"")}
    for applet in applets:
        entries.setdefault("bin/" + applet, ("symlink", "busybox"))
    return _tar(entries)


def busybox_applets():
    listed = subprocess.run([BUSYBOX, "--list"], check=True, capture_output=True, text=True).stdout.split()
    return sorted(applet for applet in listed if "/" not in applet and applet not in (".", ".."))


def _build_into(directory, go, arch, progress, started):
    binary = os.path.join(directory, "katalyst-workload")
    progress("images: go build %s (+%.1fs)" % (os.path.relpath(WORKLOAD_SRC, REPO), time.monotonic() - started))
    subprocess.run([go, "build", "-trimpath", "-buildvcs=false", "-ldflags=-s -w -buildid=", "-o", binary, "."],
                   cwd=WORKLOAD_SRC, env=go_env(arch), check=True)
    # A binary that does not start would only show up as a pod that never runs.
    subprocess.run([binary, "sleep", "--seconds", "0.01"], check=True, timeout=60)
    with open(binary, "rb") as handle:
        workload_binary = handle.read()
    with open(BUSYBOX, "rb") as handle:
        busybox = handle.read()
    layers = {PAUSE_IMAGE: (pause_layer(workload_binary), {"Entrypoint": ["/pause"], "Env": ["PATH=/"]}),
              WORKLOAD_IMAGE: (workload_layer(workload_binary, busybox, busybox_applets()),
                               {"Cmd": ["/bin/sh"], "Env": ["PATH=/bin:/usr/bin"], "WorkingDir": "/"})}
    images = {}
    for name, (layer, config) in layers.items():
        archive, manifest = oci_archive(name, arch, layer, config)
        with open(os.path.join(directory, TARBALLS[name]), "wb") as handle:
            handle.write(archive)
        images[name] = {"file": TARBALLS[name], "manifest_digest": manifest["digest"],
                        "layer_digest": "sha256:" + hashlib.sha256(layer).hexdigest(),
                        "layer_bytes": len(layer), "tar_bytes": len(archive)}
        progress("images: %s %s, %d KiB (+%.1fs)" % (name, manifest["digest"][:19], len(archive) >> 10,
                                                     time.monotonic() - started))
    return images


def _prune(out_root):
    """Remove older builds and the scratch directories of interrupted ones (called under the lock, before a new
    build: a tarball is only needed until it is imported, and every edit of the inputs makes a new key)."""
    for entry in os.listdir(out_root):
        path = os.path.join(out_root, entry)
        built = len(entry) == 16 and os.path.exists(os.path.join(path, BUILD_INFO))
        if entry.startswith(".tmp-") or built:
            shutil.rmtree(path, ignore_errors=True)


def build(out_dir=None, progress=print):
    """Build both images (or reuse the build of the same inputs); returns {image name: OCI tarball path}."""
    started = time.monotonic()
    out_root = os.path.abspath(out_dir or DEFAULT_OUT_DIR)
    os.makedirs(out_root, exist_ok=True)
    go, arch = find_go(), architecture()
    described = inputs(go, arch)
    key = hashlib.sha256(_canonical_json(described)).hexdigest()[:16]
    target = os.path.join(out_root, key)
    paths = {name: os.path.join(target, file) for name, file in TARBALLS.items()}
    if os.path.exists(os.path.join(target, BUILD_INFO)):
        progress("images: up to date in %s (%.1fs)" % (target, time.monotonic() - started))
        return paths
    # Two builds at once (two shells, xdist workers) would race on the same directory: serialise.
    with open(os.path.join(out_root, ".lock"), "w", encoding="utf-8") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if os.path.exists(os.path.join(target, BUILD_INFO)):
            progress("images: built meanwhile in %s (%.1fs)" % (target, time.monotonic() - started))
            return paths
        _prune(out_root)
        shutil.rmtree(target, ignore_errors=True)  # left incomplete by hand (build.json removed): rebuild
        scratch = tempfile.mkdtemp(prefix=".tmp-", dir=out_root)
        try:
            images = _build_into(scratch, go, arch, progress, started)
            with open(os.path.join(scratch, BUILD_INFO), "w", encoding="utf-8") as handle:
                json.dump({"key": key, "inputs": described, "images": images}, handle, indent=2, sort_keys=True)
                handle.write("\n")
            os.chmod(scratch, 0o755)  # mkdtemp made it private
            os.rename(scratch, target)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
    progress("images: built in %s (%.1fs)" % (target, time.monotonic() - started))
    return paths


def read_index(tar_path):
    """The index.json of an OCI image-layout tarball."""
    with tarfile.open(tar_path) as tar:
        return json.load(tar.extractfile("index.json"))


def manifest_digest(tar_path):
    """The digest of the (one) manifest in an OCI tarball: what `ctr images ls` shows as the image's digest."""
    return read_index(tar_path)["manifests"][0]["digest"]


def _blob_json(tar, digest):
    return json.load(tar.extractfile("blobs/sha256/" + digest.split(":", 1)[1]))


def chain_id(tar_path):
    """The chain ID of the image's layers, i.e. the name of its unpacked snapshot (one layer: its diff_id)."""
    with tarfile.open(tar_path) as tar:
        manifest = _blob_json(tar, json.load(tar.extractfile("index.json"))["manifests"][0]["digest"])
        config = _blob_json(tar, manifest["config"]["digest"])
    chain = None
    for diff_id in config["rootfs"]["diff_ids"]:
        chain = diff_id if chain is None else "sha256:" + hashlib.sha256(("%s %s" % (chain, diff_id)).encode()).hexdigest()
    return chain


def _ctr(ctr, address, namespace, *args, timeout=300):
    return subprocess.run([ctr, "--address", address, "--namespace", namespace, *args], capture_output=True,
                          text=True, timeout=timeout, check=False)


def listed_images(address, namespace="k8s.io", ctr="ctr"):
    """{image name: manifest digest} of the images in that containerd namespace."""
    listing = _ctr(ctr, address, namespace, "images", "ls")
    if listing.returncode != 0:
        raise RuntimeError("ctr images ls failed: %s" % (listing.stderr.strip() or listing.stdout.strip()))
    found = {}
    for line in listing.stdout.splitlines()[1:]:  # REF TYPE DIGEST SIZE PLATFORMS LABELS
        fields = line.split()
        if len(fields) >= 3:
            found[fields[0]] = fields[2]
    return found


def import_into(address, namespace="k8s.io", ctr="ctr", out_dir=None, snapshotter="overlayfs", progress=print):
    """Build (cached) and import both images into the containerd at ``address``, unpacked for ``snapshotter``.

    Idempotent: an image already there with the same digest and an unpacked snapshot is left alone. Returns
    {image name: "imported" | "present"}. The CRI plugin would unpack a --no-unpack import at the first container
    too; unpacking here keeps that out of the first pod's start.
    """
    paths = build(out_dir, progress)
    present = listed_images(address, namespace, ctr)
    done = {}
    for name, path in paths.items():
        digest = manifest_digest(path)
        unpacked = _ctr(ctr, address, namespace, "snapshots", "--snapshotter", snapshotter, "info", chain_id(path))
        if present.get(name) == digest and unpacked.returncode == 0:
            done[name] = "present"
            continue
        imported = _ctr(ctr, address, namespace, "images", "import", "--snapshotter", snapshotter, path)
        if imported.returncode != 0:
            raise RuntimeError("ctr images import %s failed: %s" % (path, (imported.stderr or imported.stdout).strip()))
        now = listed_images(address, namespace, ctr).get(name)
        if now != digest:
            raise RuntimeError("after importing %s, containerd lists %s as %s, not %s" % (path, name, now, digest))
        done[name] = "imported"
        progress("images: %s imported into %s (namespace %s)" % (name, address, namespace))
    return done


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m sandbox.kube.images", description=__doc__.split("\n", 1)[0])
    commands = parser.add_subparsers(dest="command", required=True)
    build_cmd = commands.add_parser("build", help="build the images (reused when the inputs are unchanged)")
    build_cmd.add_argument("--out-dir", help="default: %s" % DEFAULT_OUT_DIR)
    import_cmd = commands.add_parser("import", help="build and import the images into a containerd")
    import_cmd.add_argument("--address", required=True, help="containerd's socket")
    import_cmd.add_argument("--namespace", default="k8s.io", help="containerd namespace (the CRI plugin's: k8s.io)")
    import_cmd.add_argument("--ctr", default="ctr")
    import_cmd.add_argument("--snapshotter", default="overlayfs")
    import_cmd.add_argument("--out-dir", help="default: %s" % DEFAULT_OUT_DIR)
    args = parser.parse_args(argv)
    try:
        if args.command == "build":
            for name, path in build(args.out_dir).items():
                print("%s %s" % (name, path))
        else:
            for name, state in import_into(args.address, args.namespace, args.ctr, args.out_dir, args.snapshotter).items():
                print("%s %s" % (name, state))
    except (RuntimeError, subprocess.CalledProcessError) as err:
        print("images: %s" % err, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
