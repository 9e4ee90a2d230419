"""Which addresses a server listens on, from the kernel's own tables (/proc/net/tcp{,6} and each process's
file descriptors): for tests that every server binds 127.0.0.1 only, and nothing listens on all interfaces."""

from __future__ import annotations

import contextlib
import ipaddress
import os
from pathlib import Path

LISTEN = "0A"


def _address(hex_address: str) -> str:
    raw = bytes.fromhex(hex_address)
    # The kernel prints each 32-bit word in host (little-endian) order.
    words = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
    return str(ipaddress.ip_address(words))


def listening_inodes() -> dict[str, tuple[str, int]]:
    """socket inode → (address, port) of every TCP socket in LISTEN state, IPv4 and IPv6."""
    found = {}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(table).read_text().splitlines()[1:]:
                fields = line.split()
                if fields[3] == LISTEN:
                    address, port = fields[1].split(":")
                    found[fields[9]] = (_address(address), int(port, 16))
    return found


def session_of(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[3])


def pids_in_session(session: int) -> list[int]:
    pids = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            with contextlib.suppress(OSError, ValueError, IndexError):
                if session_of(int(name)) == session:
                    pids.append(int(name))
    return pids


def listening(pids: list[int]) -> list[tuple[int, str, int]]:
    """(pid, address, port) of every listening TCP socket these processes hold."""
    sockets = listening_inodes()
    held = []
    for pid in pids:
        with contextlib.suppress(OSError):
            for fd in os.listdir(f"/proc/{pid}/fd"):
                with contextlib.suppress(OSError):
                    target = os.readlink(f"/proc/{pid}/fd/{fd}")
                    if target.startswith("socket:[") and target[8:-1] in sockets:
                        held.append((pid, *sockets[target[8:-1]]))
    return sorted(set(held))


def not_loopback(pids: list[int]) -> list[tuple[int, str, int]]:
    return [entry for entry in listening(pids) if not ipaddress.ip_address(entry[1]).is_loopback]
