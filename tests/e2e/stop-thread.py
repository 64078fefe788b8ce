#!/usr/bin/env python3
"""Stops ONE thread of a running process, leaving the others running, until told to let go.

    stop-thread.py <pid> <thread name>

Finds the thread by its name (/proc/<pid>/task/*/comm), attaches to that thread alone with
PTRACE_SEIZE and stops it with PTRACE_INTERRUPT (no signal, so no group stop: the rest of the
process runs on). Prints "stopped <tid>" once it is stopped, then waits; on SIGTERM or SIGINT, or
when its stdin closes, it detaches and the thread runs on. (If it is killed outright the kernel
detaches it too.) The tests use it to show what /readyz says of a worker that stops beating.
"""
import ctypes
import os
import signal
import sys
import threading

PTRACE_DETACH = 17
PTRACE_SEIZE = 0x4206
PTRACE_INTERRUPT = 0x4207
WALL = 0x40000000

libc = ctypes.CDLL(None, use_errno=True)
libc.ptrace.argtypes = [ctypes.c_long, ctypes.c_long, ctypes.c_void_p, ctypes.c_void_p]
libc.ptrace.restype = ctypes.c_long


def ptrace(req, tid):
    if libc.ptrace(req, tid, None, None) != 0:
        err = ctypes.get_errno()
        sys.exit(f"ptrace({req:#x}, {tid}): {os.strerror(err)}")


def main():
    pid, name = int(sys.argv[1]), sys.argv[2]
    tids = [
        int(t)
        for t in os.listdir(f"/proc/{pid}/task")
        if open(f"/proc/{pid}/task/{t}/comm").read().strip() == name
    ]
    if len(tids) != 1:
        sys.exit(f"threads of {pid} named {name!r}: {tids}")
    tid = tids[0]
    ptrace(PTRACE_SEIZE, tid)
    ptrace(PTRACE_INTERRUPT, tid)
    os.waitpid(tid, WALL)
    print(f"stopped {tid}", flush=True)
    done = threading.Event()
    for s in (signal.SIGTERM, signal.SIGINT):
        signal.signal(s, lambda *_: done.set())
    threading.Thread(target=lambda: (sys.stdin.read(), done.set()), daemon=True).start()
    done.wait()
    ptrace(PTRACE_DETACH, tid)
    print(f"released {tid}", flush=True)


main()
