"""
Runs one service (containerd, etcd, kube-apiserver) for a test as a child subreaper, so nothing it starts
outlives the test.

PID 1 on this machine does not reap orphans, and containerd's shims detach from containerd on purpose: they
are re-parented here instead and reaped. When this process is told to stop (SIGTERM/SIGINT), or when the
test process that started it dies (PR_SET_PDEATHSIG), it sends SIGTERM to the service, waits up to GRACE
seconds, then kills and reaps every process still re-parented to it (shims, pause processes), and exits.

usage: reaper.py PARENT_PID GRACE_SECONDS -- PROGRAM ARGS...
"""
import ctypes
import os
import signal
import subprocess
import sys
import time

PR_SET_PDEATHSIG = 1
PR_SET_CHILD_SUBREAPER = 36


class Stop(Exception):
    pass


def on_signal(_sig, _frame):
    raise Stop()


def direct_children():
    me = str(os.getpid())
    found = []
    for entry in os.listdir('/proc'):
        if not entry.isdigit():
            continue
        try:
            with open(f'/proc/{entry}/stat') as f:
                stat = f.read()
        except OSError:
            continue
        # The command name is in parentheses and may hold spaces; the ppid is the second field after it.
        fields = stat[stat.rindex(')') + 2:].split()
        if fields[1] == me:
            found.append(int(entry))
    return found


def reap_all_nowait():
    """Reaps whatever has exited; returns the pids reaped."""
    reaped = []
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return reaped
        if pid == 0:
            return reaped
        reaped.append(pid)


def kill_everything_left():
    for _ in range(200):
        reap_all_nowait()
        children = direct_children()
        if not children:
            return
        for pid in children:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.05)


def main():
    parent = int(sys.argv[1])
    grace = float(sys.argv[2])
    argv = sys.argv[4:] if sys.argv[3] == '--' else sys.argv[3:]
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    if os.getppid() != parent:
        return 1  # the test process died before the death signal was armed
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    service = subprocess.Popen(argv)
    status = None
    try:
        while True:
            pid, wait_status = os.waitpid(-1, 0)
            if pid == service.pid:
                status = os.waitstatus_to_exitcode(wait_status)
                break
    except (Stop, ChildProcessError):
        pass
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if status is None:
        os.kill(service.pid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline:
            if service.pid in reap_all_nowait():
                status = 0
                break
            time.sleep(0.02)
    kill_everything_left()
    status = status or 0
    return status if status >= 0 else 128 - status


if __name__ == '__main__':
    sys.exit(main())
