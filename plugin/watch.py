"""What changed in the kernel, as the agent hears of it: link and nf_tables notifications.

Two pyroute2 netlink sockets of this network namespace, each bound to a multicast group:
rtnetlink's RTNLGRP_LINK (an interface created, deleted, enslaved to or released from a
bridge: a container's veth, a whole bridge) and nfnetlink's NFNLGRP_NFTABLES (any `nft` or
iptables-nft change, a firewall reload, `nft flush ruleset`). The agent only needs to know
*that* something changed (it then compares the whole kernel with the registry), so the
messages are read as plain netlink headers: a flush of a large ruleset sends thousands of
them, and decoding each rule would cost the agent CPU for nothing.

Each socket is read by a thread of its own, blocked in pyroute2's get(). A read that fails,
ENOBUFS above all (the kernel dropped notifications because the socket's buffer was full),
is reported as "lost": something may have changed unseen, so the agent reconciles, and the
reader opens a new socket. A source that cannot be opened at all is reported by `start`;
the agent's periodic check covers it (iptables-legacy sends no events either).
"""

import threading

RTMGRP_LINK = 0x1  # rtnetlink multicast group RTNLGRP_LINK, as a bind() bit mask
NFNLGRP_NFTABLES = 7
NETLINK_ROUTE, NETLINK_NETFILTER = 0, 12
RTM_NEWLINK, RTM_DELLINK = 16, 17
NFNL_SUBSYS_NFTABLES = 10
REOPEN_PAUSE_S = 1.0  # between attempts to reopen a socket that failed (never a busy loop)


class Changes:
    """Kernel changes since the last take(): a set of "link", "nftables" and "lost"."""

    SOURCES = {  # name -> (netlink family, bind() group mask, message types that count)
        "link": (NETLINK_ROUTE, RTMGRP_LINK, lambda kind: kind in (RTM_NEWLINK, RTM_DELLINK)),
        "nftables": (NETLINK_NETFILTER, 1 << (NFNLGRP_NFTABLES - 1), lambda kind: kind >> 8 == NFNL_SUBSYS_NFTABLES),
    }

    def __init__(self, rcvbuf: int = 1 << 20):
        self.rcvbuf = rcvbuf
        self._lock = threading.Lock()
        self._seen: set[str] = set()
        self._event = threading.Event()

    def start(self, timeout: float = 10.0) -> dict[str, str | None]:
        """Open every source, each read by a daemon thread; returns name -> None when it
        listens, else why it cannot."""
        opened = {}
        for name in self.SOURCES:
            ready, outcome = threading.Event(), {}
            threading.Thread(target=self._read, args=(name, ready, outcome), name=f"watch-{name}", daemon=True).start()
            if not ready.wait(timeout):
                outcome["error"] = "timed out opening the socket"
            opened[name] = outcome.get("error")
        return opened

    def wait(self, timeout: float) -> bool:
        """Whether a change arrived (now or within `timeout` seconds)."""
        return self._event.wait(timeout)

    def take(self) -> set[str]:
        """The kinds of change seen since the last take(), forgotten from now on."""
        with self._lock:
            seen, self._seen = self._seen, set()
            self._event.clear()
        return seen

    def _note(self, kind: str) -> None:
        with self._lock:
            self._seen.add(kind)
            self._event.set()

    def _read(self, name: str, ready: threading.Event, outcome: dict) -> None:
        import time

        family, groups, counts = self.SOURCES[name]
        failed_fresh = False  # the last socket failed before it delivered anything
        while True:
            try:
                sock = _open(family, groups, self.rcvbuf)
            except Exception as exc:
                if not ready.is_set():  # never opened: the caller reports it, and this source stays off
                    outcome["error"] = f"{type(exc).__name__}: {exc}"
                    ready.set()
                    return
                time.sleep(REOPEN_PAUSE_S)
                continue
            ready.set()
            heard = False
            try:
                while True:
                    messages = sock.get()
                    heard = True
                    if any(counts(m["header"]["type"]) for m in messages):
                        self._note(name)
            except Exception:  # ENOBUFS (notifications dropped) or a broken socket: assume the worst
                self._note("lost")
            finally:
                try:
                    sock.close()
                except Exception:
                    pass
            if not heard and failed_fresh:  # a new socket failing at once, twice: no busy loop
                time.sleep(REOPEN_PAUSE_S)
            failed_fresh = not heard


def _open(family: int, groups: int, rcvbuf: int):
    """A pyroute2 netlink socket of this namespace, subscribed to `groups` (generic marshal:
    messages arrive as headers, their payload left undecoded)."""
    from pyroute2.netlink.nlsocket import NetlinkSocket

    sock = NetlinkSocket(family=family, rcvbuf=rcvbuf)
    try:
        sock.bind(groups=groups)
    except Exception:
        sock.close()
        raise
    return sock
