#!/usr/bin/env bash
# Builds Kubernetes components at the version go.mod pins, each into
# ${MESHPLANE_CACHE:-$HOME/.cache/meshplane}/<name>-<version>, and prints
# their paths, one a line. A binary already there is kept: each builds once
# per machine (kubelet and kube-apiserver take minutes on 2 cores from a cold
# Go build cache, which grows by several GB).
#
# Usage: build.sh [NAME...]   NAME is kube-apiserver (the default),
# kubelet, kube-controller-manager, kube-scheduler or kubectl; `node` means
# all five; e2e.test (the upstream e2e suite, `go test -c`) and agnhost (its
# test image's binary) are what `make netpol-e2e` runs. kubeapiserver.Find (kubetest) and kubenode look for the binaries
# at the same paths.
set -euo pipefail
cd "$(dirname "$0")"
kv=$(awk '$1 == "require" && $2 == "k8s.io/kubernetes" {print $3}' go.mod)
[ -n "$kv" ] || { echo "build.sh: no k8s.io/kubernetes require in go.mod" >&2; exit 1; }
[ $# -gt 0 ] || set -- kube-apiserver
names=()
for n in "$@"; do
  case $n in
    node) names+=(kubelet kube-apiserver kube-controller-manager kube-scheduler kubectl) ;;
    kube-apiserver|kubelet|kube-controller-manager|kube-scheduler|kubectl|e2e.test|agnhost) names+=("$n") ;;
    *) echo "build.sh: unknown component $n: want kube-apiserver, kubelet, kube-controller-manager, kube-scheduler, kubectl, node, e2e.test or agnhost" >&2; exit 2 ;;
  esac
done
cache=${MESHPLANE_CACHE:-$HOME/.cache/meshplane}
mkdir -p "$cache"
minor=${kv#v1.}; minor=${minor%%.*}
ld="-s -w"
for p in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
  ld="$ld -X $p.gitVersion=$kv -X $p.gitMajor=1 -X $p.gitMinor=$minor"
done
ld="$ld -X k8s.io/component-base/version.gitTreeState=clean"
tmp=
trap 'rm -f "$tmp"' EXIT
for n in "${names[@]}"; do
  out=$cache/$n-$kv
  if [ ! -x "$out" ]; then
    echo "building $n $kv into $out (takes minutes the first time)" >&2
    tmp=$(mktemp "$cache/.$n-$kv.XXXXXX")
    case $n in
      e2e.test) CGO_ENABLED=0 go test -c -trimpath -tags providerless -ldflags "$ld" -o "$tmp" k8s.io/kubernetes/test/e2e ;;
      agnhost) CGO_ENABLED=0 go build -trimpath -ldflags "-s -w" -o "$tmp" k8s.io/kubernetes/test/images/agnhost ;;
      *) CGO_ENABLED=0 go build -trimpath -tags providerless,notest -ldflags "$ld" -o "$tmp" "k8s.io/kubernetes/cmd/$n" ;;
    esac
    chmod 755 "$tmp"
    mv "$tmp" "$out"
    tmp=
  fi
  echo "$out"
done
