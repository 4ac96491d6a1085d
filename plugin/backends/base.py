"""The contract every firewall backend keeps (nftables.py, iptables.py).

A backend renders the policy layer's desired state (policy.Desired: per bridge, what its
attachments need) into its own rules and applies them; it decides nothing. Which
attachments count, when the whole desired state must be re-applied, what a departing
attachment frees (policy.Release) and the ports' bridge-port isolation flag (ports.py)
are plugin.lifecycle's business. Both backends have the same methods with the same
signatures (tests/unit/test_backend_contract.py checks it) and enforce the same
verdicts (tests/e2e/test_backend_conformance.py runs the same scenarios against both).

Every method that reads or changes the kernel raises CniError when the kernel or the
backend's tools refuse (code ENFORCEMENT_FAILED, or TRY_AGAIN_LATER for a busy xtables
lock), never anything else for an expected failure. All of them run under the host-wide
lock (plugin.hoststate.HostLock), so each sees the rules as the previous one left them.

What a backend may never do, whatever it is asked: delete a rule, element or chain that
is not its own; take away a table, chain or jump that all bridges share while the kernel
holds its rules for a bridge the desired state does not know (a damaged registry may
have lost that bridge's attachments); open anything for a bridge beyond what the desired
state grants it.
"""

from abc import ABC, abstractmethod


class Backend(ABC):
    name: str  # shown to users and kept in the registry: "nftables" or "iptables"

    @abstractmethod
    def unavailable_reason(self) -> str | None:
        """None when this backend can be used in this network namespace, else why not (a
        library that does not load, a tool that is not installed, a kernel that refuses).
        Changes nothing; never raises."""

    @abstractmethod
    def ensure(self, addition) -> bool:
        """Make the kernel hold `addition` (policy.addition(): what one ADD needs, with the
        needs of the attachments on its bridge and in its isolationGroup) by adding only,
        at a cost that does not grow with the number of networks.

        Returns True when that is done, False when adding is not enough and nothing was
        changed: the ruleset is missing or damaged (a firewall reload, `nft flush ruleset`),
        or the backend has no add-only path at all. Then lifecycle calls apply() with the
        desired state of every registered attachment. Atomic (one transaction);
        idempotent."""

    @abstractmethod
    def apply(self, desired) -> dict:
        """Make the kernel enforce `desired` (policy.Desired of every attachment registered on
        this backend, the one being added first), rebuilding whatever is missing or
        damaged; grants of its bridges that it does not need go, and bridges it does not
        know keep what they have. Idempotent.

        Returns facts for the registry, kept per backend until the last attachment goes
        (what this backend made exist that it must remove then, e.g. iptables-nft's filter
        tables). Atomic per transaction: iptables needs one per IP family, so a failure
        may leave one family applied; the CniError then carries `facts` too, and lifecycle
        takes back what was applied (release() of the same attachment)."""

    @abstractmethod
    def release(self, change, facts: dict) -> None:
        """Remove what `change` (policy.Release: one bridge's part of a desired state that
        shrank) frees, with `facts` as apply() returned them; only what is present (removing
        something absent is no error). Nothing shared by all bridges goes while the kernel
        holds rules of another bridge. Idempotent; atomic per transaction, as apply()."""

    @abstractmethod
    def verify(self, desired) -> list[str]:
        """What the kernel lacks to enforce `desired` (the attachments of one bridge, or all of
        the backend's), one line each, naming the backend or family; empty when everything
        is in place. A ruleset present but enforcing nothing (a dormant table, a deleted
        jump) counts as missing. Reads only."""

    @abstractmethod
    def audit(self, desired, granted) -> tuple[list[str], list[str]]:
        """CHECK's question, from one reading: (what verify(desired) finds, the grants the
        kernel holds for the bridges of `desired` that `granted` does not need). `granted`
        is the desired state of every registered attachment that could grant those bridges
        anything: those on them and in their isolationGroups. Reads only."""

    @abstractmethod
    def surplus(self, desired) -> dict[str, list[str]]:
        """Per bridge of `desired` (every attachment registered on this backend), the grants
        the kernel holds for it beyond what `desired` needs: group peers, published ports,
        a guard's exceptions. Extra drops are no grant: they close more, never less. Reads
        only."""

    @abstractmethod
    def revoke(self, desired) -> list[str]:
        """Remove every grant surplus(desired) finds, and return what went (one line each).
        Removing a grant only closes. Idempotent; atomic per transaction."""

    @abstractmethod
    def enforced(self) -> set[str]:
        """The bridges the kernel holds this backend's isolation rules for, registered or not.
        Reads only."""

    @abstractmethod
    def drops(self) -> dict[str, dict[str, int]]:
        """Packets the isolation dropped: bridge -> reason (plugin.reasons) -> packets, for every
        bridge the kernel holds counters for, registered or not; a reason the bridge has no
        counter for is left out. A cross-network drop counts for the bridge it was going
        into (whose ingressPolicy refused it), as does a direct-access drop; an internal drop
        counts for each internal bridge among the two it left and was going into; every other
        reason for the bridge the packet or frame came from. Counters live as long as the
        bridge's rules: adding or removing another network never resets them (a table rebuilt after damage starts again at
        zero). Reads only; a ruleset that cannot be read counts as nothing dropped."""

    @abstractmethod
    def cleanup_commands(self, bridge: str | None, facts: dict, ports: list[str]) -> list[list[str]]:
        """The shell commands (argv lists, as `isolation cleanup --dry-run` prints them; `nft`
        ones run through libnftables, see libnft.run_command) that remove what this backend
        made: with `bridge`, that bridge's rules and the anti-spoofing of `ports` (its
        registered attachments' ports); without, everything, with `facts` as apply()
        returned them. Reads only."""


def first_bridge(desired) -> str:
    """The bridge a change is for, named in errors: the first of the desired state (lifecycle
    puts the ADD's own attachment first)."""
    return next(iter(desired.bridges), "")
