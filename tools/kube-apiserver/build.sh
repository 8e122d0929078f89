#!/usr/bin/env bash
# Builds kube-apiserver (only it) at the version go.mod pins, into
# ${MESHPLANE_CACHE:-$HOME/.cache/meshplane}/kube-apiserver-<version>, and
# prints that path. A binary already there is kept: the build runs once per
# machine (several minutes on 2 cores; the Go build cache grows by a few GB).
# kubetest.Find looks for the binary at the same path.
set -euo pipefail
cd "$(dirname "$0")"
kv=$(awk '$1 == "require" && $2 == "k8s.io/kubernetes" {print $3}' go.mod)
[ -n "$kv" ] || { echo "build.sh: no k8s.io/kubernetes require in go.mod" >&2; exit 1; }
cache=${MESHPLANE_CACHE:-$HOME/.cache/meshplane}
out=$cache/kube-apiserver-$kv
if [ -x "$out" ]; then
  echo "$out"
  exit 0
fi
mkdir -p "$cache"
minor=${kv#v1.}; minor=${minor%%.*}
ld="-s -w"
for p in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
  ld="$ld -X $p.gitVersion=$kv -X $p.gitMajor=1 -X $p.gitMinor=$minor"
done
ld="$ld -X k8s.io/component-base/version.gitTreeState=clean"
echo "building kube-apiserver $kv into $out (takes minutes the first time)" >&2
tmp=$(mktemp "$cache/.kube-apiserver-$kv.XXXXXX")
trap 'rm -f "$tmp"' EXIT
CGO_ENABLED=0 go build -trimpath -tags providerless,notest -ldflags "$ld" -o "$tmp" k8s.io/kubernetes/cmd/kube-apiserver
chmod 755 "$tmp"
mv "$tmp" "$out"
trap - EXIT
echo "$out"
