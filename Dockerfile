# syntax=docker/dockerfile:1
# The mesh-cni node agent (install/30-daemonset.yaml runs it).   docker build -t mesh-cni:0.1.0 .

# --- build: TypeScript and the C shim, then drop the dev dependencies ---------------------------------------
FROM node:20-bookworm AS build
WORKDIR /app
COPY package.json package-lock.json ./
# Scripts are skipped here because ours need the sources (copied below, after this cacheable layer). The one
# native addon, koffi's, is prebuilt: npm installs it as the optional package for this machine
# (@koromix/koffi-linux-<arch>), so nothing is compiled.
RUN npm ci --ignore-scripts --no-audit --no-fund
# Only what the product build reads: tsconfig.build.json compiles src/ alone (tests, bench and the demo are
# compiled by tsconfig.json, which the image never needs).
COPY tsconfig.build.json ./
COPY scripts/build-engine.js scripts/build-native.js scripts/
COPY native/ native/
COPY src/ src/
RUN npm run build:product \
 && node scripts/build-native.js \
 && npm prune --omit=dev --no-audit --no-fund

# --- runtime: Node and the programs the engine runs in pod network namespaces -------------------------------
FROM node:20-bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends iptables nftables iproute2 ipset \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /app
COPY --from=build /app/package.json ./package.json
COPY --from=build /app/node_modules ./node_modules
COPY --from=build /app/dist/src ./dist/src
COPY --from=build /app/build/mesh-cni ./build/mesh-cni
# the self-contained standalone engine (scripts/build-engine.js, run by npm run build), installed as mesh-cni.d
COPY --from=build /app/build/engine ./build/engine
# The CLI on PATH, for `kubectl exec ds/mesh-cni -- mesh-cni status` (main.js is executable, `#!/usr/bin/env node`).
RUN ln -s /app/dist/src/cli/main.js /usr/local/bin/mesh-cni
# Root, deliberately, and nothing here can run as another user: the agent writes the host's CNI dirs
# (/opt/cni/bin, /etc/cni/net.d, root's), owns the shim's socket (the shim only trusts a root peer), and
# enters other pods' network namespaces and programs iptables/nftables there, which the DaemonSet allows
# through added capabilities (NET_ADMIN, NET_RAW, SYS_ADMIN, SYS_PTRACE) rather than `privileged`.
USER root
ENTRYPOINT ["node", "/app/dist/src/cli/main.js", "agent"]
