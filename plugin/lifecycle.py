"""Attaching and detaching: the registry and the backends kept in step.

Every path that changes what is enforced (ADD, DEL, GC, the admin CLI) goes
through here, under the HostLock, so the rules on the host are always those the
registry's attachments need.

Ordering is chosen so that a crash between two steps leaves garbage, never a gap:
ADD applies the rules before recording the attachment; a detach forgets the
attachment before removing rules. Rules without an attachment are harmless and
`isolation status` reports them.

The backends (plugin.backends.base) only render and apply: which attachments a change
concerns, whether the backend's add-only path is enough or the desired state of every
registered attachment must be re-applied, and what a departing attachment frees (the
difference of the desired state with and without it, policy.release) are decided here,
and so is the ports' bridge-port isolation flag (plugin.backends.ports), the same on
both backends.
"""

from plugin import policy
from plugin.backends.ports import ensure_all_flags, ensure_flags, flag_problems, release_flags
from plugin.errors import CniError
from plugin.hoststate import state_dir
from plugin.registry import Attachment, Registry, deferred_deletes


def attach(backend, intent: policy.BridgeIntent, attachment: Attachment) -> None:
    """Enforce `intent` and record `attachment`. When the backend finds its rules damaged or
    gone (a firewall reload), every registered attachment on it is re-applied too: the
    next ADD on any network restores isolation for all of them."""
    reg = Registry.load(state_dir())
    settle_deferred(reg)
    previous = reg.get(attachment.key)
    readdressed = previous is not None and (previous.spoof, previous.mac, previous.addresses) != (
        attachment.spoof, attachment.mac, attachment.addresses)
    try:
        facts = _enforce(backend, reg, intent, attachment.key, readdressed)
    except CniError as err:
        # against everything registered, the attachment's own earlier ADD included: it stays
        release = _release_for(reg, attachment, reg.on_backend(backend.name))
        made = getattr(err, "facts", None)  # what the failed ADD made exist (iptables-nft's tables)
        _remember(reg, backend.name, made or {})
        _undo(backend, release, reg.backends.get(backend.name, {}), err)
        if made:  # kept for the last DEL, or forgotten with what the undo removed
            if release.last:
                reg.backends.pop(backend.name, None)
            try:
                reg.save()
            except CniError:
                pass
        raise
    reg.put(attachment)
    _remember(reg, backend.name, facts)
    reg.save()
    if previous is not None and (previous.backend, policy.intent_of(previous)) != (backend.name, intent):
        _replaced(reg, previous)


def _enforce(backend, reg: Registry, intent: policy.BridgeIntent, key: tuple, readdressed: bool) -> dict:
    """Make the kernel enforce `intent` (the attachment with `key`); returns the backend's facts.

    First the backend's add-only path, with the attachments on the same bridge or in the
    same isolationGroup (all an intact ruleset needs: the registry decodes only their
    lines). When the backend reports that this is not enough (its ruleset is missing or
    damaged, or it has no such path), the desired state of every attachment registered on
    it is applied, this one first. `readdressed`: the attachment was registered with other
    addresses, which only the full path removes."""
    def others(atts) -> list[policy.BridgeIntent]:
        return [policy.intent_of(a) for a in atts if a.backend == backend.name and a.key != key]

    if not intent.enforces_anything:
        # no rule of its own, but on a bridge another attachment isolates its port needs the
        # flag like every port there (the flag only parts two flagged ports)
        ensure_flags(intent, others(reg.matching(intent.bridge)))
        return {}

    if readdressed:
        everyone = others(reg.attachments.values())
        ensure_all_flags([intent, *everyone], required=intent)
        return backend.apply(policy.desired([intent, *everyone]))
    related = others(reg.matching(intent.bridge, intent.group))
    ensure_flags(intent, related)
    # tenancy pairs every port with the ports and addresses of its group, wherever they are, and
    # knows every container's addresses (a tenant's port may send the host for none outside its
    # group): only the full desired state knows them all, so while any tenant is registered an
    # ADD takes the full path (else a plain container's order of arrival would decide)
    tenants = intent.tenant or any(i.tenant for i in related) or reg.tenanted()
    if not tenants and backend.ensure(policy.addition(intent, related)):
        return {}
    return backend.apply(policy.desired([intent, *others(reg.attachments.values())]))


def _replaced(reg: Registry, previous: Attachment) -> None:
    """The same attachment was ADDed again with another configuration (a conflist edited, then
    the container re-attached): what only its earlier configuration granted goes, as if that
    earlier attachment had been DELeted. Fails closed: when that cannot be done, ADD fails."""
    from plugin.backends import make

    backend = make(previous.backend)
    try:  # as its DEL would: with a damaged registry, only what provably was its alone
        release = _release_for(reg, previous, reg.on_backend(previous.backend))
        _release(backend, release, reg.backends.get(previous.backend, {}))
    except CniError as err:
        raise CniError(err.code, f"could not remove what the earlier configuration of this attachment granted: {err.msg}",
                       err.details) from None


def _release(backend, release: policy.Release, facts: dict) -> None:
    """Remove what `release` frees: the backend's rules, then the isolation flag of the ports
    it names (best effort: a port may be gone). Raises the backend's CniError."""
    backend.release(release, facts)
    release_flags(release)


def _undo(backend, release: policy.Release, facts: dict, err: CniError) -> None:
    """Take back what a failed ensure may have applied: on iptables each family is its own
    transaction, so IPv4 may hold the new rules while IPv6 refused them. What comes off is
    exactly what DEL of the attachment would remove. Best effort: `err` stays the answer,
    and its details say whether the undo succeeded."""
    try:
        _release(backend, release, facts)
        err.details = f"{err.details}; nothing was left applied".lstrip("; ")
    except CniError as undo:
        err.details = f"{err.details}; undoing the partial change failed too: {undo.msg}: {undo.details}".lstrip("; ")


def _release_for(reg: Registry, att: Attachment, remaining: list, ports: dict | None = None,
                 strict: bool = False) -> policy.Release:
    """What `att` takes with it, given the attachments still on its backend. With the
    registry damaged (or `strict`), only what was its port's own (policy.port_only) when
    the bridge keeps ports nothing registered accounts for: containers whose lines the
    registry lost may still need the bridge's rules. (An intact registry is trusted on the DEL path: there a neighbour's
    port still waiting for its own DEL or ADD is normal under concurrency.)
    `ports`: bridge -> its ports, read from the kernel when not given."""
    release = policy.release(att, remaining)
    if not (reg.damaged or strict):
        return release
    if ports is None:
        from plugin import topology  # pyroute2: only a damaged registry's DEL pays its import

        try:
            ports = topology.read().ports
        except OSError:
            return policy.port_only(release)  # cannot tell: keep the bridge's rules
    known = {a.port for a in remaining if a.bridge == att.bridge}
    if att.portindex is None or _index_of(att.port) in (att.portindex, None):
        known.add(att.port)  # its own port (not a namesake created since: that one is unknown)
    return policy.port_only(release) if set(ports.get(att.bridge, ())) - known else release


def _index_of(port: str | None) -> int | None:
    from plugin.links import ifindex

    return ifindex(port) if port else None


def detach(reg: Registry, attachments: list[Attachment], strict: bool = False) -> list[str]:
    """Forget `attachments` and remove what they alone needed; continues past failures,
    returning them (a teardown failure never blocks forgetting the attachment).

    All are forgotten in one registry write before any rule goes (a crash leaves rules
    nobody needs, never a gap), so detaching N attachments (a bridge with many
    containers vanished) costs one write, not N. Each is then released against what is
    still registered plus those of the batch not yet released. `strict` (prune, reconcile,
    the agent): a bridge keeps its rules while ports nothing registered accounts for remain
    on it, as with a damaged registry."""
    from plugin.backends import make

    leaving = []
    for att in attachments:
        if reg.attachments.pop(att.key, None) is not None:
            leaving.append(att)
    if not leaving:
        return []
    reg.save()
    errors, ports, dropped = [], None, False
    for i, att in enumerate(leaving):
        remaining = reg.on_backend(att.backend) + [a for a in leaving[i + 1:] if a.backend == att.backend]
        if ports is None and (reg.damaged or strict):
            from plugin import topology  # pyroute2: only a damaged registry's DEL pays its import

            try:
                ports = topology.read().ports
            except OSError:
                ports = None
        release = _release_for(reg, att, remaining, ports, strict)
        backend = make(att.backend)
        try:
            reason = backend.unavailable_reason()
            if reason:
                raise CniError(0, f"backend {att.backend} is not usable: {reason}")
            _release(backend, release, reg.backends.get(att.backend, {}))
        except CniError as err:
            errors.append(f"{att.network}/{att.container}/{att.ifname} on {att.bridge}: {err.msg}")
            continue
        if release.last and not reg.damaged and reg.backends.pop(att.backend, None) is not None:
            dropped = True
    if dropped:
        reg.save()
    return errors


def settle_deferred(reg: Registry) -> list[str]:
    """Carry out the DELs that found the lock busy (under the lock, like every change)."""
    import os

    errors = []
    for path, key in deferred_deletes(state_dir()):
        att = reg.get(key)
        if att is not None:
            errors += detach(reg, [att])
        os.remove(path)
    return errors


def reconcile() -> list[str]:
    """Make the kernel match the registry, under the HostLock: forget attachments whose bridge
    or host-side port has vanished (with their rules), re-apply each backend's attachments wherever the
    kernel lacks anything (a firewall reload, `nft flush ruleset`, `iptables -F`), and
    remove the rules of bridges nothing registered needs; a damaged registry is then
    rebuilt from what is proven and its damage marker cleared.
    Returns one line per thing done; nothing when all was in place."""
    from plugin.backends import make

    done = []
    reg = Registry.load(state_dir())
    damaged = reg.attachments is not None and reg.damaged  # decoded whole first: damage may hide in any line
    if deferred_deletes(state_dir()):
        errors = settle_deferred(reg)
        done.append("carried out deferred DELs" + (f" ({'; '.join(errors)})" if errors else ""))
    gone, vanished = departed(reg.attachments.values())
    if gone or vanished:
        errors = detach(reg, gone + vanished, strict=True)
        if gone:
            done.append(f"forgot {len(gone)} attachment(s) of vanished bridge(s) "
                        + ", ".join(sorted({a.bridge for a in gone})))
        if vanished:
            done.append(f"forgot {len(vanished)} attachment(s) whose host-side interface vanished: "
                        + ", ".join(sorted(f"{a.port} on {a.bridge}" for a in vanished)))
        if errors:
            done.append(f"could not remove everything they needed: {'; '.join(errors)}")
    for name in sorted({a.backend for a in reg.attachments.values()}):
        backend = make(name)
        reason = backend.unavailable_reason()
        if reason:
            done.append(f"{name}: cannot restore isolation: {reason}")
            continue
        intents = [policy.intent_of(a) for a in reg.on_backend(name)]
        desired = policy.desired(intents)
        missing = backend.verify(desired) + flag_problems(intents)
        if missing:
            ensure_all_flags(intents)
            facts = backend.apply(desired)
            _remember(reg, name, facts)
            reg.save()
            done.append(f"{name}: restored the isolation of {len(intents)} attachment(s): {'; '.join(missing[:4])}"
                        + (f" (+{len(missing) - 4} more)" if len(missing) > 4 else ""))
    done += _remove_orphans(reg)
    done += _revoke(reg)
    from plugin.config import prune

    prune({a.network for a in reg.attachments.values()})  # the verdicts of networks with no attachment left
    if damaged:
        # What is left is what could be proven: the readable lines, less the attachments
        # whose bridge or port is gone; rules of bridges nothing registered accounts for
        # went above once no port was left on them, and the others stay (their containers
        # may be alive) until then. Later teardowns never remove those (plugin.backends
        # count what the kernel holds, detach the bridges' ports).
        reg.save()
        lost = _unaccounted_ports(reg)
        if lost:  # a DEL trusting this registry could take rules those containers still need
            done.append(f"rebuilt the registry from {len(reg.attachments)} readable attachment(s); it stays marked "
                        f"damaged while ports no attachment accounts for remain on their bridges: "
                        + ", ".join(lost[:8]) + (f" (+{len(lost) - 8} more)" if len(lost) > 8 else ""))
        else:
            reg.clear_damage()
            done.append(f"rebuilt the damaged registry from {len(reg.attachments)} readable attachment(s) still "
                        f"in place ({damaged})")
    return done


def _unaccounted_ports(reg: Registry) -> list[str]:
    """Ports plugged into a bridge of the registered attachments that none of them accounts
    for: containers whose registry lines were lost (unknown when the links cannot be read)."""
    from plugin import topology

    try:
        ports = topology.read().ports
    except OSError:
        return ["(the bridges' ports cannot be read)"]
    known = {a.port for a in reg.attachments.values()}
    return sorted(f"{p} on {b}" for b in {a.bridge for a in reg.attachments.values()}
                  for p in ports.get(b, ()) if p not in known)


def _revoke(reg: Registry) -> list[str]:
    """Remove what the kernel grants registered bridges beyond what their attachments need
    (a group left, a published port turned off, an exception removed, when the DEL that
    should have taken it crashed half-way, or a rule added by hand). Removing a grant only
    closes: bridges nothing registered holds are left to _remove_orphans."""
    from plugin.backends import make

    done = []
    for name in sorted({a.backend for a in reg.attachments.values()}):
        backend = make(name)
        if backend.unavailable_reason():
            continue
        try:
            gone = backend.revoke(policy.desired(policy.intent_of(a) for a in reg.on_backend(name)))
        except CniError as err:
            done.append(f"{name}: could not remove grants no registered attachment needs: {err.msg}: {err.details}")
            continue
        if gone:
            done.append(f"{name}: removed grants no registered attachment needs: {'; '.join(gone)}")
    return done


def departed(attachments, links=None) -> tuple[list[Attachment], list[Attachment]]:
    """(attachments whose bridge is gone, those whose host-side port vanished): the runtime
    never sent DEL (`ctr run -d`, a killed runtime). Fail closed: an attachment without a
    known port, or whose port exists with the index recorded at ADD (or none recorded),
    is not counted; a port deleted and re-created under its name has vanished.
    `links`: a topology.Links already read, else one is."""
    from plugin import topology

    attachments = list(attachments)
    if not attachments:
        return [], []
    try:
        links = links or topology.read()
    except OSError:
        return [], []
    present = links.interfaces
    gone = [a for a in attachments if not a.routed and a.bridge not in links.bridges]
    vanished = [a for a in attachments if (a.routed or a.bridge in links.bridges) and a.port is not None and (
        a.port not in present or (a.portindex is not None and present[a.port] != a.portindex))]
    return gone, vanished


def _remove_orphans(reg: Registry) -> list[str]:
    """Remove the rules of bridges no registered attachment accounts for (left by a crash
    between applying and recording, or by a teardown that failed half-way), once nothing
    is plugged into the bridge any more. A bridge that still has ports keeps its rules:
    its containers may be alive and the registry lost or damaged, and removing their
    isolation would fail open (`isolation status` names them; `isolation cleanup
    --bridge` removes them by hand)."""
    from plugin import topology
    from plugin.backends import make

    done = []
    in_use = None
    for name in ("nftables", "iptables"):
        backend = make(name)
        if backend.unavailable_reason():
            continue
        registered = reg.on_backend(name)
        desired = policy.desired(policy.intent_of(a) for a in registered)
        members = {a.port for a in registered if a.routed}  # a routed segment's interfaces are in its sets
        for bridge in sorted(backend.enforced() - {a.bridge for a in registered} - members):
            if in_use is None:
                try:
                    in_use = topology.read().ports
                except OSError as err:  # cannot tell which bridges have ports: every rule stays
                    return done + [f"cannot tell which bridges still have ports ({err}): orphan rules stay"]
            if in_use.get(bridge):
                continue
            try:
                _release(backend, policy.orphan_release(bridge, desired), reg.backends.get(name, {}))
                done.append(f"{name}: removed the rules of {bridge}, which no registered attachment needs")
            except CniError as err:
                done.append(f"{name}: could not remove the unregistered rules of {bridge}: {err.msg}")
    return done


def _remember(reg: Registry, backend: str, facts: dict) -> None:
    if not facts:
        return
    known = reg.backends.setdefault(backend, {})
    for key, values in facts.items():
        known[key] = sorted(set(known.get(key, [])) | set(values))
