/** The test image: an OCI layout built by hand around /bin/busybox, for `ctr images import`. */
import { createHash } from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { gzipSync } from 'node:zlib';
import { sh } from './netns';

export const SANDBOX_IMAGE = 'docker.io/mesh-cni/pause:test';

function sha256(data: Buffer): string {
  return createHash('sha256').update(data).digest('hex');
}

function goArch(): string {
  return ({ x64: 'amd64', arm64: 'arm64', arm: 'arm', ppc64: 'ppc64le', s390x: 's390x' } as Record<string, string>)[process.arch] ?? process.arch;
}

/** Writes an OCI image archive whose only process is `busybox sleep`; returns its path. */
export function buildSandboxImage(dir: string, imageName = SANDBOX_IMAGE): string {
  const rootfs = path.join(dir, 'rootfs');
  fs.mkdirSync(path.join(rootfs, 'bin'), { recursive: true });
  fs.copyFileSync('/bin/busybox', path.join(rootfs, 'bin/busybox'));
  fs.chmodSync(path.join(rootfs, 'bin/busybox'), 0o755);
  const layerTar = path.join(dir, 'layer.tar');
  sh('tar', ['--owner=0', '--group=0', '--numeric-owner', '--mtime=@0', '-C', rootfs, '-cf', layerTar, 'bin']);
  const layer = fs.readFileSync(layerTar);
  const layerGz = gzipSync(layer);
  const config = Buffer.from(
    JSON.stringify({
      architecture: goArch(),
      os: 'linux',
      config: { Entrypoint: ['/bin/busybox', 'sleep', '2147483647'], WorkingDir: '/' },
      rootfs: { type: 'layers', diff_ids: [`sha256:${sha256(layer)}`] },
    }),
  );
  const manifest = Buffer.from(
    JSON.stringify({
      schemaVersion: 2,
      mediaType: 'application/vnd.oci.image.manifest.v1+json',
      config: { mediaType: 'application/vnd.oci.image.config.v1+json', digest: `sha256:${sha256(config)}`, size: config.length },
      layers: [{ mediaType: 'application/vnd.oci.image.layer.v1.tar+gzip', digest: `sha256:${sha256(layerGz)}`, size: layerGz.length }],
    }),
  );
  const layout = path.join(dir, 'oci');
  const blobs = path.join(layout, 'blobs/sha256');
  fs.mkdirSync(blobs, { recursive: true });
  for (const blob of [config, manifest, layerGz]) fs.writeFileSync(path.join(blobs, sha256(blob)), blob);
  fs.writeFileSync(path.join(layout, 'oci-layout'), JSON.stringify({ imageLayoutVersion: '1.0.0' }));
  fs.writeFileSync(
    path.join(layout, 'index.json'),
    JSON.stringify({
      schemaVersion: 2,
      manifests: [
        {
          mediaType: 'application/vnd.oci.image.manifest.v1+json',
          digest: `sha256:${sha256(manifest)}`,
          size: manifest.length,
          platform: { architecture: goArch(), os: 'linux' },
          annotations: { 'io.containerd.image.name': imageName, 'org.opencontainers.image.ref.name': 'test' },
        },
      ],
    }),
  );
  const archive = path.join(dir, 'image.tar');
  sh('tar', ['--owner=0', '--group=0', '--numeric-owner', '-C', layout, '-cf', archive, 'oci-layout', 'index.json', 'blobs']);
  fs.rmSync(rootfs, { recursive: true, force: true });
  fs.rmSync(layerTar, { force: true });
  return archive;
}
