"""Attaching and detaching: the registry and the backends kept in step.

Every path that changes what is enforced (ADD, DEL, GC, the admin CLI) goes
through here, under the HostLock, so the rules on the host are always those the
registry's attachments need.

Ordering is chosen so that a crash between two steps leaves garbage, never a gap:
ADD applies the rules before recording the attachment; a detach forgets the
attachment before removing rules. Rules without an attachment are harmless and
`isolation status` reports them.
"""

from plugin import policy
from plugin.errors import CniError
from plugin.hoststate import state_dir
from plugin.registry import Attachment, Registry


def attach(backend, intent: policy.BridgeIntent, attachment: Attachment) -> None:
    """Enforce `intent` and record `attachment`. Every registered attachment on the backend is
    re-ensured too (at no extra read): after a firewall reload wiped the rules, the next
    ADD on any network restores isolation for all of them."""
    reg = Registry.load(state_dir())
    others = [policy.intent_of(a) for a in reg.on_backend(backend.name)
              if a.key != attachment.key]
    facts = backend.ensure(intent, others)
    reg.attachments[attachment.key] = attachment
    if facts:
        known = reg.backends.setdefault(backend.name, {})
        for key, values in facts.items():
            known[key] = sorted(set(known.get(key, [])) | set(values))
    reg.save()


def detach(reg: Registry, attachments: list[Attachment]) -> list[str]:
    """Forget `attachments` and remove what they alone needed; continues past failures,
    returning them (a teardown failure never blocks forgetting the attachment)."""
    from plugin.backends import make

    errors = []
    for att in attachments:
        if reg.attachments.pop(att.key, None) is None:
            continue
        reg.save()
        backend = make(att.backend)
        release = policy.release(att, reg.on_backend(att.backend))
        try:
            reason = backend.unavailable_reason()
            if reason:
                raise CniError(0, f"backend {att.backend} is not usable: {reason}")
            backend.release(release, reg.backends.get(att.backend, {}))
        except CniError as err:
            errors.append(f"{att.network}/{att.container}/{att.ifname} on {att.bridge}: {err.msg}")
            continue
        if release.last and reg.backends.pop(att.backend, None) is not None:
            reg.save()
    return errors
