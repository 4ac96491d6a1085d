"""Stand-ins for unit tests. A unit test runs in the test process's own network namespace,
whose firewall tests must never change: backends here touch none."""

from plugin.registry import Attachment


class FakeBackend:
    """A backend touching no firewall: `reason` makes it unusable (as a missing libnftables
    would), and the releases it is given are recorded in `log`."""

    def __init__(self, name, reason=None, log=None):
        self.name, self._reason = name, reason
        self.log = [] if log is None else log

    def unavailable_reason(self):
        return self._reason

    def release(self, r, facts):
        self.log.append(r)


def attachment(bridge, policy, port, container="c") -> Attachment:
    """An attachment of network "net", interface eth0, on the nftables backend."""
    return Attachment("net", container, "eth0", bridge, port, policy, "nftables")
