#!/usr/bin/env python3
"""Runs a command in a pseudo-terminal and plays a script against it, for
the specs of what entsync does on a terminal (the REPL, the progress line).

    pty_run.py SCRIPT_JSON [--cwd DIR] [--timeout SECONDS] -- COMMAND [ARGS...]

SCRIPT_JSON is a list of steps:
    {"expect": "text"}            wait until the output holds text (after
                                  what earlier steps matched)
    {"send": "text"}              type text ("\\t" Tab, "\\u0003" Ctrl-C, ...)
    {"signal": "INT"}             send a signal to the process
    {"sleep": 0.2}                wait
Prints one JSON object: {"ok": all steps passed, "failed_step": index or
null, "status": exit status or null, "output": everything the terminal
showed (escape codes included)}. The process gets end of input (Ctrl-D)
after the last step, then SIGKILL if it has not ended in time.
"""
import json
import os
import pty
import select
import signal
import sys
import time


def main():
    args = sys.argv[1:]
    script = json.loads(args.pop(0))
    cwd, timeout = None, 20.0
    while args and args[0] != "--":
        flag = args.pop(0)
        if flag == "--cwd":
            cwd = args.pop(0)
        elif flag == "--timeout":
            timeout = float(args.pop(0))
    args.pop(0)
    pid, fd = pty.fork()
    if pid == 0:
        if cwd:
            os.chdir(cwd)
        os.execvp(args[0], args)
    buf = b""
    seen = 0  # where the next expect starts looking

    def pump(wait):
        nonlocal buf
        r, _, _ = select.select([fd], [], [], wait)
        if r:
            try:
                chunk = os.read(fd, 65536)
            except OSError:
                return False
            if not chunk:
                return False
            buf += chunk
        return True

    ok, failed = True, None
    for i, step in enumerate(script):
        if "expect" in step:
            needle = step["expect"].encode()
            end = time.time() + timeout
            while buf.find(needle, seen) < 0 and time.time() < end:
                if not pump(0.05):
                    break
            at = buf.find(needle, seen)
            if at < 0:
                ok, failed = False, i
                break
            seen = at + len(needle)
        elif "send" in step:
            os.write(fd, step["send"].encode())
        elif "signal" in step:
            os.kill(pid, getattr(signal, "SIG" + step["signal"]))
        elif "sleep" in step:
            end = time.time() + step["sleep"]
            while time.time() < end:
                pump(0.02)
    status = None
    end = time.time() + timeout
    next_eof = time.time()
    while time.time() < end:
        done, st = os.waitpid(pid, os.WNOHANG)
        if done:
            status = os.waitstatus_to_exitcode(st)
            break
        if time.time() >= next_eof:
            try:
                os.write(fd, b"\x04")
            except OSError:
                pass
            next_eof = time.time() + 2
        pump(0.05)
    if status is None:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
    while pump(0.01):
        if not select.select([fd], [], [], 0)[0]:
            break
    print(json.dumps({"ok": ok, "failed_step": failed, "status": status,
                      "output": buf.decode("utf-8", "replace")}))


if __name__ == "__main__":
    main()
