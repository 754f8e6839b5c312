#!/usr/bin/env bash
# Build the pinned Kubernetes release (kube-apiserver, kube-controller-manager, kube-scheduler,
# kubelet, kubectl) and etcd as ONE multi-call binary from the Go module in this directory.
#
#   sandbox/kube/build.sh            build into .build/kube/<k8s-version>/ (no-op when up to date)
#   sandbox/kube/build.sh --force    rebuild even when up to date
#
# Output: .build/kube/<k8s-version>/kube plus symlinks kube-apiserver, kube-controller-manager,
# kube-scheduler, kubelet, kubectl, etcd pointing at it, a BUILD-INFO file, and the symlink
# .build/kube/current -> <k8s-version>. The last line printed is the bin directory.
#
# Environment: KUBE_BUILD_DIR (default <repo>/.build/kube), and the usual Go variables (GOCACHE,
# GOMODCACHE, GOPROXY, GOTOOLCHAIN) are honoured as they are.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
out_root=${KUBE_BUILD_DIR:-$repo/.build/kube}
force=0
case "${1:-}" in
  --force) force=1 ;;
  "") ;;
  *) echo "usage: $0 [--force]" >&2; exit 2 ;;
esac

t0=$SECONDS
step() { printf '[kube-build +%ss] %s\n' "$((SECONDS - t0))" "$*"; }
die() { printf '[kube-build +%ss] ERROR: %s\n' "$((SECONDS - t0))" "$*" >&2; exit 1; }

# The pinned versions, read from go.mod (no Go invocation, so the no-op path stays instant).
modver() { awk -v m="$1" '$1 == m && $2 ~ /^v/ { print $2; exit }' "$here/go.mod"; }
k8s_version=$(modver k8s.io/kubernetes)
etcd_version=$(modver go.etcd.io/etcd/server/v3)
[[ $k8s_version =~ ^v([0-9]+)\.([0-9]+)\.([0-9]+)$ ]] || die "no release k8s.io/kubernetes vX.Y.Z in go.mod"
k8s_major=${BASH_REMATCH[1]}
k8s_minor=${BASH_REMATCH[2]}
[[ -n $etcd_version ]] || die "no go.etcd.io/etcd/server/v3 in go.mod"

out=$out_root/$k8s_version
bin=$out/kube
commands=(kube-apiserver kube-controller-manager kube-scheduler kubelet kubectl etcd)
inputs=("$here/go.mod" "$here/go.sum" "$here/main.go" "$here/build.sh")

up_to_date() {
  [[ -x $bin ]] || return 1
  local f c
  for f in "${inputs[@]}"; do [[ $bin -nt $f ]] || return 1; done
  for c in "${commands[@]}"; do [[ -L $out/$c ]] || return 1; done
  [[ -f $out/BUILD-INFO && ! $out/BUILD-INFO -ot $bin ]]
}

step "Kubernetes $k8s_version + etcd $etcd_version -> $out"
if [[ $force == 0 ]] && up_to_date; then
  step "up to date (binary newer than go.mod, go.sum, main.go, build.sh): nothing to do"
  ln -sfn "$k8s_version" "$out_root/current"
  echo "$out"
  exit 0
fi

# Go's official tarball installs to /usr/local/go, which a non-login shell (CI) may not have on PATH.
command -v go >/dev/null || { [[ -x /usr/local/go/bin/go ]] && PATH=$PATH:/usr/local/go/bin; }
command -v go >/dev/null || die "go is not on PATH (nor in /usr/local/go/bin)"
mkdir -p "$out"
# Two builds of the same version at once (two shells, CI) would race on the output: serialise.
exec 9>"$out_root/.lock"
flock 9
if [[ $force == 0 ]] && up_to_date; then
  step "built meanwhile by another build.sh: nothing to do"
  echo "$out"
  exit 0
fi

cd "$here"
step "go $(go env GOVERSION) (GOTOOLCHAIN=$(go env GOTOOLCHAIN)), $(nproc) cores, load:$(uptime | sed 's/.*load average://')"

step "step 1/3: download modules (GOMODCACHE=$(go env GOMODCACHE))"
go mod download || die "go mod download failed"
# The release date stands in for the build date, so the binary is reproducible.
build_date=$(go list -m -f '{{if .Time}}{{.Time.UTC.Format "2006-01-02T15:04:05Z"}}{{end}}' k8s.io/kubernetes)
[[ -n $build_date ]] || build_date=1970-01-01T00:00:00Z

# Version stamping exactly like Kubernetes' hack/lib/version.sh (kube::version::ldflags): the same
# -X variables in k8s.io/component-base/version and k8s.io/client-go/pkg/version. A module has
# no git commit: gitCommit is emptied (instead of the "$Format:%H$" placeholder), gitTreeState
# is left unset as version.sh does when it has no commit.
ldflags=(-s -w)
for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
  ldflags+=(
    "-X '$pkg.gitVersion=$k8s_version'"
    "-X '$pkg.gitMajor=$k8s_major'"
    "-X '$pkg.gitMinor=$k8s_minor'"
    "-X '$pkg.gitCommit='"
    "-X '$pkg.buildDate=$build_date'"
  )
done

step "step 2/3: go build (cold: ~30-60 min on 2 cores; GOCACHE=$(go env GOCACHE))"
# CGO_ENABLED=0: static, as upstream builds kube-apiserver/-controller-manager/-scheduler/kubectl;
# in this dependency graph only the standard library's net, os/user and plugin have cgo parts.
# A ticker in the background prints progress; go build stays in the foreground so Ctrl-C stops it.
ticker() {
  local n=0 s
  trap 'kill "$s" 2>/dev/null; wait "$s" 2>/dev/null; exit 0' TERM # leave no orphaned sleep
  while :; do
    sleep 5 &
    s=$!
    wait "$s" || true
    n=$((n + 5))
    ((n % 60)) || step "  compiling... load:$(uptime | sed 's/.*load average://')"
  done
}
ticker &
ticker=$!
trap 'kill "$ticker" 2>/dev/null || true; wait "$ticker" 2>/dev/null || true; rm -f "$bin.new"' EXIT
CGO_ENABLED=0 go build -mod=readonly -buildvcs=false -trimpath -ldflags "${ldflags[*]}" \
  -o "$bin.new" . || die "go build failed"
kill "$ticker" 2>/dev/null || true
wait "$ticker" 2>/dev/null || true

step "step 3/3: version check, symlinks"
got=$("$bin.new" kube-apiserver --version)
[[ $got == "Kubernetes $k8s_version" ]] || die "kube-apiserver --version said '$got', want 'Kubernetes $k8s_version'"
got=$("$bin.new" etcd --version)
got=${got%%$'\n'*}
[[ $got == "etcd Version: ${etcd_version#v}" ]] || die "etcd --version said '$got', want etcd ${etcd_version#v}"
mv -f "$bin.new" "$bin"
for c in "${commands[@]}"; do ln -sfn kube "$out/$c"; done
{
  echo "kubernetes=$k8s_version"
  echo "etcd=$etcd_version"
  echo "go=$(go env GOVERSION)"
  echo "build_date=$build_date"
  echo "size_bytes=$(stat -c %s "$bin")"
  echo "built_in_seconds=$((SECONDS - t0))"
} >"$out/BUILD-INFO"
ln -sfn "$k8s_version" "$out_root/current"
step "done: $(du -h "$bin" | cut -f1) $bin"
echo "$out"
