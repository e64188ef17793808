"""
Holds the cluster suite's private mount namespace (test/support/cluster.ts). Run as
`unshare --mount --propagation private -- python3 cluster-keeper.py DIR`: inside that new namespace it

  - binds DIR/run over /run and DIR/log over /var/log (the runtime's sockets, netns files and pod logs),
  - puts an overlayfs over /etc, /opt and /var/lib (upper dirs under DIR), so the standard paths the
    manifests name (/etc/cni/net.d, /opt/cni/bin, /var/lib/...) are writable and private,
  - binds DIR/containerd and DIR/kubelet over /var/lib/containerd and /var/lib/kubelet (containerd's
    overlay snapshotter cannot stack on an overlayfs upper dir),
  - binds a file over each /proc/sys entry kubelet rewrites (the host keeps its values),
  - shadows every `node` on the standard PATH with a program that fails as a missing one would (most
    Kubernetes nodes have no Node.js: the plugin's fallback must not need it),
  - makes / rshared inside only (kubelet's mount propagation needs it),

then writes DIR/keeper.pid and waits for SIGTERM. Nothing here is visible to the
host's mount namespace; daemons join with `nsenter --mount=/proc/PID/ns/mnt`.
"""
import os
import signal
import subprocess
import sys

SYSCTLS = [
    'vm/overcommit_memory',
    'vm/panic_on_oom',
    'kernel/panic',
    'kernel/panic_on_oops',
    'kernel/keys/root_maxkeys',
    'kernel/keys/root_maxbytes',
]


def mount(*args):
    r = subprocess.run(['mount', *args], capture_output=True, text=True)
    if r.returncode != 0:
        raise SystemExit('mount %s failed: %s' % (' '.join(args), r.stderr.strip()))


def main():
    base = sys.argv[1]
    for sub in ('run', 'log', 'containerd', 'kubelet', 'sysctl'):
        os.makedirs(os.path.join(base, sub), exist_ok=True)
    os.chmod(os.path.join(base, 'run'), 0o755)
    mount('--make-rprivate', '/')
    mount('--bind', os.path.join(base, 'run'), '/run')
    mount('--bind', os.path.join(base, 'log'), '/var/log')
    for top in ('etc', 'opt', 'var/lib'):
        name = top.replace('/', '-')
        upper = os.path.join(base, 'overlay', name, 'upper')
        work = os.path.join(base, 'overlay', name, 'work')
        os.makedirs(upper, exist_ok=True)
        os.makedirs(work, exist_ok=True)
        os.makedirs('/' + top, exist_ok=True)
        mount('-t', 'overlay', 'overlay', '-o', 'lowerdir=/%s,upperdir=%s,workdir=%s' % (top, upper, work), '/' + top)
    for sub in ('containerd', 'kubelet'):
        os.makedirs('/var/lib/' + sub, exist_ok=True)
        mount('--bind', os.path.join(base, sub), '/var/lib/' + sub)
    for entry in SYSCTLS:
        source = '/proc/sys/' + entry
        if not os.path.exists(source):
            continue
        copy = os.path.join(base, 'sysctl', entry.replace('/', '.'))
        with open(source) as f, open(copy, 'w') as out:
            out.write(f.read())
        mount('--bind', copy, source)
    no_node = os.path.join(base, 'no-node')
    with open(no_node, 'w') as f:
        f.write('#!/bin/sh\necho "node: not installed on this node (the cluster suite hides it)" >&2\nexit 127\n')
    os.chmod(no_node, 0o755)
    for d in ('/usr/local/sbin', '/usr/local/bin', '/usr/sbin', '/usr/bin', '/sbin', '/bin'):
        candidate = os.path.join(d, 'node')
        if os.path.isfile(candidate) and not os.path.islink(os.path.dirname(candidate)):
            mount('--bind', no_node, candidate)
    mount('--make-rshared', '/')
    with open(os.path.join(base, 'keeper.pid.tmp'), 'w') as f:
        f.write(str(os.getpid()))
    os.rename(os.path.join(base, 'keeper.pid.tmp'), os.path.join(base, 'keeper.pid'))
    # Run under test/support/reaper.py: stopped by SIGTERM, which the reaper also sends when the test dies.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    while True:
        signal.pause()

if __name__ == '__main__':
    main()
