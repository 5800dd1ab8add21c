#!/usr/bin/env python3
"""Drives an interactive Claude Code session through a pseudo-terminal, as a user at a terminal
would: answers the first-run dialogs, types a prompt, waits for the reply, exits.

    pty-turn.py REPLY PROMPT -- COMMAND [ARG...]

Exits 0 once REPLY appeared on the screen after the prompt was sent; 1 on a timeout, with the
screen so far (escape sequences removed) on stderr."""
import os
import pty
import re
import select
import sys
import time

reply, prompt = sys.argv[1], sys.argv[2]
command = sys.argv[sys.argv.index("--") + 1:]
pid, fd = pty.fork()
if pid == 0:
    os.environ["TERM"] = "xterm-256color"
    os.execvp(command[0], command)

# A wide terminal, so that lines do not wrap into the words looked for.
import fcntl, struct, termios  # noqa: E401
fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", 50, 200, 0, 0))

screen = ""
ANSI = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]|\x1b\][^\x07]*\x07|\x1b[()][0-9A-B]|\x1b[=>78]")


def pump(seconds):
    global screen
    end = time.time() + seconds
    while time.time() < end:
        ready, _, _ = select.select([fd], [], [], max(0.0, end - time.time()))
        if not ready:
            return
        try:
            data = os.read(fd, 65536)
        except OSError:
            return
        if not data:
            return
        screen += ANSI.sub(" ", data.decode("utf-8", "replace"))


def send(text):
    os.write(fd, text.encode())


# First-run dialogs and how a user answers them (the folder-trust and bypass-permissions
# dialogs default to "No, exit": the answer that goes on is their second option).
DIALOGS = [
    (re.compile(r"Bypass Permissions mode", re.I), "\x1b[B\r"),
    (re.compile(r"Do you want to use this API key", re.I), "\x1b[A\r"),
    (re.compile(r"Choose the text style|text style that looks best", re.I), "\r"),
    (re.compile(r"Yes, I trust this folder", re.I), "\x1b[B\r"),
    (re.compile(r"Security notes|Press Enter to continue", re.I), "\r"),
]

deadline = time.time() + float(os.environ.get("PTY_TURN_SECONDS", "90"))
sent_prompt_at = None
handled = 0
while time.time() < deadline:
    pump(0.5)
    unseen = screen[handled:]
    if sent_prompt_at is not None:
        if reply in screen[sent_prompt_at:]:
            send("\x03")
            pump(0.3)
            send("\x03")
            pump(1)
            print("reply seen", flush=True)
            sys.exit(0)
        continue
    for pattern, keys in DIALOGS:
        match = pattern.search(unseen)
        if match:
            time.sleep(0.3)
            send(keys)
            handled += match.end()
            break
    else:
        # The input box is up: its status line (bypass mode) or its hint.
        if re.search(r"bypass permissions on|\? for shortcuts", unseen):
            time.sleep(0.5)
            send(prompt)
            time.sleep(0.3)
            send("\r")
            sent_prompt_at = len(screen)
sys.stderr.write(screen[-6000:])
sys.exit(1)
