"""Stand-ins for unit tests. A unit test runs in the test process's own network namespace,
whose firewall tests must never change: backends here touch none."""

from plugin.registry import Attachment


class FakeBackend:
    """A backend touching no firewall: `reason` makes it unusable (as a missing libnftables
    would), the releases it is given are recorded in `log`, and drops() answers `counts`
    (bridge -> reason -> packets, as Backend.drops() does), or raises it if it is an exception."""

    def __init__(self, name, reason=None, log=None, counts=None):
        self.name, self._reason = name, reason
        self.log = [] if log is None else log
        self.counts = {} if counts is None else counts

    def unavailable_reason(self):
        return self._reason

    def release(self, r, facts):
        self.log.append(r)

    def drops(self):
        if isinstance(self.counts, BaseException):
            raise self.counts
        return self.counts


def attachment(bridge, policy, port, container="c") -> Attachment:
    """An attachment of network "net", interface eth0, on the nftables backend."""
    return Attachment("net", container, "eth0", bridge, port, policy, "nftables")
