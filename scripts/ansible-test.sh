#!/usr/bin/env bash
# Run ansible-test on a copy of the collection at .build/ansible-test/ansible_collections/katalyst/colocation
# (ansible-test needs that path), with the offline get-pip stand-in in place.  Usage: ansible-test.sh sanity|units ARGS
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
venv=$top/.venv
pip_version=$("$venv/bin/python" - <<'PY'
import re, ansible_test, os
src = open(os.path.join(os.path.dirname(ansible_test.__file__), "_internal", "python_requirements.py")).read()
print(re.search(r"pip='([0-9.]+)'", src).group(1))
PY
)
cache=$HOME/.ansible/test/cache
shim=$cache/get_pip_${pip_version//./_}.py
if [ ! -f "$shim" ] || ! ls "$cache"/pip-"$pip_version"-py3-none-any.whl >/dev/null 2>&1; then
  mkdir -p "$cache"
  "$venv/bin/pip" download -q --no-deps -d "$cache" "pip==$pip_version"
  cp "$top/scripts/get_pip_offline.py" "$shim"
fi
dest=$top/.build/ansible-test/ansible_collections/katalyst/colocation
rm -rf "$dest"; mkdir -p "$dest"
# Only what git would ship: tracked files plus new, not ignored ones.
(cd "$top" && git ls-files -co --exclude-standard -z | xargs -0 -I{} cp --parents -P {} "$dest"/ 2>/dev/null || true)
cd "$dest"
git init -q . && git add -A >/dev/null 2>&1 && git -c user.email=ci@local -c user.name=ci commit -qm snapshot >/dev/null
export PATH=$venv/bin:$PATH
exec "$venv/bin/ansible-test" "$@"
