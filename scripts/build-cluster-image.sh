#!/usr/bin/env bash
# Builds the agent image from our Dockerfile, as an operator would, for the cluster suite (test/cluster/).
# No container registry is reachable here, so the Dockerfile's two base images are made first, from Debian's
# apt and this host's Node.js, under the exact names the Dockerfile pulls:
#
#   docker.io/library/node:20-bookworm-slim  debootstrap --variant=minbase bookworm + Node.js laid out as the
#                                            official images do (/usr/local/bin/node, /usr/local/lib/node_modules)
#   docker.io/library/node:20-bookworm       the slim one + build-essential python3 ca-certificates git curl
#                                            xz-utils gnupg, npm_config_nodedir=/usr/local (node-gyp cannot
#                                            download headers here)
#
# Then the project image: a clean `git clone` of the commit under test (so a Dockerfile COPY that misses a
# file the build needs fails here), `buildah bud --pull-never --layers`, exported as a docker-archive.
#
# Everything is cached outside the checkout, in $MESH_CNI_CACHE (default /var/cache/mesh-cni):
#   containers/          buildah's own storage (never the host's /var/lib/containers) and its CNI dir
#   images/base.stamp    what the base images were made from; a rerun with the same inputs skips them
#   images/mesh-cni-<key>.tar    the image of a commit, keyed by its tree less test/, bench/, docs/, charts/,
#                                install/ (the manifests that run it), .ci and
#                                *.md (which no image build reads); a rerun for the same key takes a second
#
# usage: scripts/build-cluster-image.sh [COMMIT]   (default HEAD; prints the archive's path on stdout)
# Needs root, buildah and debootstrap (scripts/setup-node-deps.sh installs both).
set -euo pipefail

REPO=$(cd "$(dirname "$0")/.." && pwd)
COMMIT=${1:-HEAD}
CACHE=${MESH_CNI_CACHE:-/var/cache/mesh-cni}
IMAGES=$CACHE/images
STORE=$CACHE/containers
IMAGE=docker.io/library/mesh-cni:0.1.0
SLIM=docker.io/library/node:20-bookworm-slim
FULL=docker.io/library/node:20-bookworm
# Bump when what the base images are made of changes here.
BASE_VERSION="mesh-cni base images v1"

log() { printf 'build-cluster-image: %s\n' "$*" >&2; }
die() { log "$*"; exit 1; }

[[ $(id -u) -eq 0 ]] || die "must run as root (debootstrap, buildah storage in $CACHE)"
for p in buildah debootstrap git node tar; do
  command -v "$p" >/dev/null || die "$p not found: install it with scripts/setup-node-deps.sh (Debian package ${p/node/nodejs})"
done

mkdir -p "$IMAGES" "$STORE/net.d" "$STORE/tmp"
exec 8>"$IMAGES/.lock"
flock 8
started=$SECONDS

# buildah's storage and network config are private to this cache: the host's /var/lib/containers and, above
# all, its /etc/cni/net.d are never written (buildah keeps a CNI lock file in its network config dir).
export CONTAINERS_CONF=$STORE/containers.conf
cat >"$CONTAINERS_CONF" <<EOF
[network]
network_backend = "cni"
network_config_dir = "$STORE/net.d"
cni_plugin_dirs = ["/usr/lib/cni"]
EOF
export TMPDIR=$STORE/tmp
DRIVER=${MESH_CNI_BUILDAH_DRIVER:-overlay}
bh() { buildah --root "$STORE/storage" --runroot "$STORE/run" --storage-driver "$DRIVER" "$@"; }

git -C "$REPO" rev-parse --verify --quiet "$COMMIT^{commit}" >/dev/null || die "no commit $COMMIT in $REPO"
# The cache key: the commit's tree without what no image build reads (tests, benchmarks, docs, CI), so a
# test-only commit reuses the image. The build itself always runs from the whole clean clone; if the
# Dockerfile ever copies one of these paths, drop it from this list.
tree=$(git -C "$REPO" ls-tree "$COMMIT" | awk -F'\t' '$2 !~ /^(test|bench|docs|charts|install|\.ci)$/ && $2 !~ /\.md$/' | git -C "$REPO" hash-object --stdin)
git -C "$REPO" diff --quiet "$COMMIT" -- Dockerfile .dockerignore package.json package-lock.json tsconfig.build.json scripts native src ||
  log "note: uncommitted changes are not in the image: it is built from commit $COMMIT"
archive=$IMAGES/mesh-cni-$tree.tar
if [[ -s $archive ]]; then
  log "cached: $archive (${SECONDS}s)"
  printf '%s\n' "$archive"
  exit 0
fi

# --- base images ------------------------------------------------------------------------------------------
node_version=$(node --version)
extra_ca=()
shopt -s nullglob
extra_ca=(/usr/local/share/ca-certificates/*.crt)
shopt -u nullglob
base_key=$(
  {
    echo "$BASE_VERSION"
    echo "$node_version"
    sha256sum "$(command -v node)"
    [[ ${#extra_ca[@]} -gt 0 ]] && cat "${extra_ca[@]}"
    cat /etc/apt/sources.list.d/debian.sources 2>/dev/null || true
  } | sha256sum | cut -d' ' -f1
)
have_base() {
  [[ $(cat "$IMAGES/base.stamp" 2>/dev/null) == "$base_key" ]] &&
    bh inspect --type image "$SLIM" >/dev/null 2>&1 && bh inspect --type image "$FULL" >/dev/null 2>&1
}

if ! have_base; then
  # The mirror is read from this host's apt sources at run time, never written into a file of ours.
  mirror=$(awk '/^URIs:/ && $2 ~ /debian\/?$/ { print $2; exit }' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)
  [[ -n $mirror ]] || mirror=$(sed -n -E 's/^deb[[:space:]]+(\[[^]]*\][[:space:]]+)?([^[:space:]]+)[[:space:]]+bookworm[[:space:]].*/\2/p' /etc/apt/sources.list 2>/dev/null | head -n 1)
  [[ -n $mirror ]] || die "no Debian mirror found in /etc/apt/sources.list.d/debian.sources or /etc/apt/sources.list"
  work=$(mktemp -d "$STORE/tmp/base.XXXXXX")
  trap 'rm -rf "$work"' EXIT
  rootfs=$work/rootfs
  log "debootstrap bookworm (minbase) from $mirror"
  t0=$SECONDS
  mkdir -p "$CACHE/debs"
  debootstrap --variant=minbase --cache-dir="$CACHE/debs" bookworm "$rootfs" "$mirror" >"$work/debootstrap.log" 2>&1 || {
    tail -n 30 "$work/debootstrap.log" >&2
    die "debootstrap failed (log above)"
  }
  log "debootstrap done in $((SECONDS - t0))s"
  # The image's apt sources are this host's (the runtime stage runs apt-get install).
  rm -f "$rootfs/etc/apt/sources.list"
  if [[ -f /etc/apt/sources.list.d/debian.sources ]]; then
    cp /etc/apt/sources.list.d/debian.sources "$rootfs/etc/apt/sources.list.d/debian.sources"
  else
    cp /etc/apt/sources.list "$rootfs/etc/apt/sources.list"
  fi
  rm -rf "$rootfs/var/cache/apt/archives/"*.deb "$rootfs/var/lib/apt/lists/"*
  # Node.js as the official images lay it out.
  mkdir -p "$rootfs/usr/local/bin" "$rootfs/usr/local/lib/node_modules" "$rootfs/usr/local/include"
  cp "$(readlink -f "$(command -v node)")" "$rootfs/usr/local/bin/node"
  node_prefix=$(dirname "$(dirname "$(readlink -f "$(command -v node)")")")
  for m in npm corepack; do
    [[ -d $node_prefix/lib/node_modules/$m ]] && cp -a "$node_prefix/lib/node_modules/$m" "$rootfs/usr/local/lib/node_modules/"
  done
  [[ -d $rootfs/usr/local/lib/node_modules/npm ]] || die "npm not found under $node_prefix/lib/node_modules"
  cp -a "$node_prefix/include/node" "$rootfs/usr/local/include/node" || die "Node.js headers not found under $node_prefix/include/node"
  ln -s ../lib/node_modules/npm/bin/npm-cli.js "$rootfs/usr/local/bin/npm"
  ln -s ../lib/node_modules/npm/bin/npx-cli.js "$rootfs/usr/local/bin/npx"
  [[ -d $rootfs/usr/local/lib/node_modules/corepack ]] && ln -s ../lib/node_modules/corepack/dist/corepack.js "$rootfs/usr/local/bin/corepack"
  # Where npm reaches the registry through a TLS-inspecting proxy, the images must trust its CA as this host does.
  if [[ ${#extra_ca[@]} -gt 0 ]]; then
    mkdir -p "$rootfs/usr/local/share/ca-certificates"
    cp "${extra_ca[@]}" "$rootfs/usr/local/share/ca-certificates/"
  fi

  path_env=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
  ctr=$(bh from --pull-never scratch)
  mnt=$(bh mount "$ctr")
  tar -C "$rootfs" -cf - . | tar -C "$mnt" -xpf -
  bh umount "$ctr" >/dev/null
  bh config --env PATH=$path_env --env NODE_VERSION="${node_version#v}" --cmd node "$ctr"
  bh commit --quiet --rm "$ctr" "$SLIM" >/dev/null
  log "committed $SLIM"

  t0=$SECONDS
  ctr=$(bh from --pull-never "$SLIM")
  bh run --isolation chroot "$ctr" -- sh -c 'apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends build-essential python3 ca-certificates git curl xz-utils gnupg >/dev/null && update-ca-certificates >/dev/null && rm -rf /var/lib/apt/lists/*' \
    || die "installing the build tools into $FULL failed"
  bh config --env npm_config_nodedir=/usr/local --env NODE_EXTRA_CA_CERTS=/etc/ssl/certs/ca-certificates.crt "$ctr"
  bh commit --quiet --rm "$ctr" "$FULL" >/dev/null
  log "committed $FULL (build tools in $((SECONDS - t0))s)"
  printf '%s\n' "$base_key" >"$IMAGES/base.stamp"
  rm -rf "$work"
  trap - EXIT
fi

# --- the project image ------------------------------------------------------------------------------------
src=$(mktemp -d "$STORE/tmp/src.XXXXXX")
trap 'rm -rf "$src"' EXIT
git clone --quiet --no-checkout "$REPO" "$src/repo"
git -C "$src/repo" checkout --quiet "$(git -C "$REPO" rev-parse "$COMMIT")"
# A build that failed before leaves its working container (and its overlay mount) behind: this store is ours
# alone (the lock above), so none is in use now.
bh rm --all >/dev/null 2>&1 || true
build_started=$(date +%s)
log "building $IMAGE from a clean clone of $(git -C "$REPO" rev-parse --short "$COMMIT") (key ${tree:0:12})"
t0=$SECONDS
(cd "$src/repo" && bh bud --isolation chroot --pull-never --layers -t "$IMAGE" . >"$src/bud.log" 2>&1) || {
  tail -n 40 "$src/bud.log" >&2
  die "buildah bud failed (the log's end is above)"
}
log "image built in $((SECONDS - t0))s"
rm -f "$archive.new"
bh push --quiet "$IMAGE" "docker-archive:$archive.new:$IMAGE" >/dev/null
mv "$archive.new" "$archive"
# Intermediate images of earlier builds (about 1.7 GB per source change) are removed; a layer this build
# reused is the parent of one it made and cannot be removed, so the npm ci layer stays cached.
for _ in 1 2 3 4 5; do
  removed=0
  while read -r id created; do
    [[ -n $id ]] || continue
    ts=$(date -d "${created% UTC}" +%s 2>/dev/null || echo "$build_started")
    if [[ $ts -lt $build_started ]] && bh rmi "$id" >/dev/null 2>&1; then removed=1; fi
  done < <(bh images --filter dangling=true --format '{{.ID}} {{.CreatedAtRaw}}' 2>/dev/null)
  [[ $removed -eq 1 ]] || break
done
# Older archives of other trees are dead weight; keep the newest few.
ls -1t "$IMAGES"/mesh-cni-*.tar 2>/dev/null | tail -n +4 | xargs -r rm -f
# containers/storage leaves its graph root bind-mounted (private) on the host; it mounts it again when needed.
umount "$STORE/storage/overlay" 2>/dev/null || true
log "exported $archive in ${SECONDS}s total"
printf '%s\n' "$archive"
