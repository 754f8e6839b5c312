"""Extract chosen collections from the `ansible` package's wheel into a collections path.

Usage: extract_collections.py WHEEL_DIR DEST NAMESPACE/NAME [...]
Galaxy is unreachable from these machines; the `ansible` package on the package index carries the same
collections, so we take just the ones this project uses.
"""
import glob
import sys
import zipfile


def main(argv):
    wheel_dir, dest, wanted = argv[1], argv[2], argv[3:]
    wheels = glob.glob(wheel_dir + "/ansible-*.whl")
    if not wheels:
        sys.exit("no ansible wheel in %s" % wheel_dir)
    prefixes = tuple("ansible_collections/%s/" % name for name in wanted)
    with zipfile.ZipFile(wheels[0]) as bundle:
        members = [m for m in bundle.namelist() if m.startswith(prefixes)]
        bundle.extractall(dest, members)
    found = sorted({"/".join(m.split("/")[1:3]) for m in members})
    missing = sorted(set(wanted) - set(found))
    if missing:
        sys.exit("collections not found in %s: %s" % (wheels[0], ", ".join(missing)))
    print("extracted %s into %s" % (", ".join(found), dest))


if __name__ == "__main__":
    main(sys.argv)
