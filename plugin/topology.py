"""The host's links as the slow paths read them: one rtnetlink dump through pyroute2.

`reconcile`, `prune`, the admin CLI and the agent ask "which interfaces exist, which are
bridges, what is plugged into each, which ports carry the isolation flag" and get the
answer from one RTM_GETLINK dump of this process's network namespace (unlike /sys/class/net,
whatever /sys this process sees). pyroute2 parses it: a maintained library instead of a
hand-written parser.

Importing pyroute2 costs ~250 ms, so nothing on a container's start imports this module:
ADD, CHECK, DEL and GC read single links with plugin.links' ioctls. Only a DEL facing a
damaged registry, a rare recovery path, pays the import here (README, Performance).
"""

from plugin.record import Factory, value_class


@value_class(frozen=True, unhashed=("interfaces", "ports"))
class Links:
    """One snapshot of this namespace's links (the defaults: a namespace with none)."""

    interfaces: dict = Factory(dict)  # name -> ifindex
    bridges: frozenset = frozenset()  # names of Linux bridges
    ports: dict = Factory(dict)  # bridge name -> sorted names of the interfaces plugged into it
    isolated: frozenset = frozenset()  # names of bridge ports carrying the isolation flag (IFLA_BRPORT_ISOLATED)


def read() -> Links:
    """This namespace's links; OSError when the kernel cannot be asked."""
    from pyroute2 import IPRoute
    from pyroute2.netlink.exceptions import NetlinkError

    try:
        with IPRoute() as ipr:
            dump = [(m["index"], m.get("IFLA_IFNAME"), m.get("IFLA_MASTER"), m.get(("IFLA_LINKINFO", "IFLA_INFO_KIND")),
                     m.get(("IFLA_LINKINFO", "IFLA_INFO_SLAVE_DATA", "IFLA_BRPORT_ISOLATED")))
                    for m in ipr.get_links()]
    except NetlinkError as exc:
        raise OSError(exc.code, f"netlink: the link dump failed: {exc}") from None
    names = {index: name for index, name, *_ in dump}
    bridges = {index for index, _, _, kind, _ in dump if kind == "bridge"}
    ports: dict[str, list[str]] = {}
    for _, name, master, _, _ in dump:
        if master in bridges:
            ports.setdefault(names[master], []).append(name)
    return Links(
        interfaces={name: index for index, name in names.items()},
        bridges=frozenset(names[index] for index in bridges),
        ports={bridge: sorted(found) for bridge, found in ports.items()},
        isolated=frozenset(name for _, name, master, _, flag in dump if master in bridges and flag),
    )


def set_isolated(port: str, on: bool) -> None:
    """Set or clear bridge port `port`'s isolation flag; OSError when it is no bridge port here."""
    from pyroute2 import IPRoute
    from pyroute2.netlink.exceptions import NetlinkError

    try:
        with IPRoute() as ipr:
            found = ipr.link_lookup(ifname=port)
            if not found:
                raise OSError(19, f"no interface {port}")
            ipr.brport("set", index=found[0], isolated=1 if on else 0)
    except NetlinkError as exc:
        raise OSError(exc.code, f"{port}: {exc}") from None
