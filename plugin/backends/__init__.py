"""Firewall backends: each renders the policy layer's desired state into its own rules and
applies it atomically. The contract they keep, method by method, is base.Backend;
select() and make() give the one to use.

  base.py       the contract (an abstract class), documented once
  nftables.py   the default: tables of our own through libnftables (libnft.py)
  iptables.py   the upstream CNI-ISOLATION chains in the filter table
  libnft.py     libnftables in-process: both backends use it
  ports.py      the bridge-port isolation flag (`isolated`), the same on both
"""

from plugin.errors import BACKEND_UNAVAILABLE, IO_FAILURE, CniError


CHOICE = "backend"  # in the namespace's state directory: what `auto` decided there


def select(backend: str, state: str | None = None):
    """The backend for a configured `backend` value, checked to be usable here.

    `auto` prefers nftables (its drops are final whatever other tables accept, and its
    cost does not grow with the number of networks) and falls back to iptables. With the
    namespace's state directory given, `auto` is decided once there and kept: networks
    on different backends are not isolated from each other, so a later failure of the
    decided backend fails (103) instead of silently choosing the other.
    """
    if backend == "auto" and state is not None:
        return _decided(state)
    reasons = []
    for name in (("nftables", "iptables") if backend == "auto" else (backend,)):
        chosen = make(name)
        reason = chosen.unavailable_reason()
        if reason is None:
            return chosen
        reasons.append(f"{name}: {reason}")
    raise CniError(BACKEND_UNAVAILABLE, f"backend {backend!r} is not usable here", "; ".join(reasons))


def _decided(state: str):
    """`auto` as decided for this namespace (deciding it now if nobody has)."""
    import os

    path = os.path.join(state, CHOICE)
    name = _read_choice(path)
    if name is None:
        name = _registered(state)  # attachments made before the decision was kept: follow them
        chosen = make(name) if name else select("auto")
        tmp = f"{path}.{os.getpid()}.tmp"
        try:
            with open(tmp, "w") as f:
                f.write(chosen.name + "\n")
            os.chmod(tmp, 0o600)
            os.link(tmp, path)  # atomic and exclusive: the first run to decide wins, whole
        except FileExistsError:
            pass
        except OSError as exc:
            raise CniError(IO_FAILURE, f"cannot record the backend chosen by 'auto' in {path}: {exc.strerror}") from None
        finally:
            try:
                os.unlink(tmp)
            except OSError:
                pass
        name = _read_choice(path)
        if name is None:
            raise CniError(BACKEND_UNAVAILABLE, f"the backend chosen by 'auto' cannot be read back from {path}")
    chosen = make(name)
    reason = chosen.unavailable_reason()
    if reason:
        raise CniError(BACKEND_UNAVAILABLE, f"backend 'auto' is {name} on this host network namespace, "
                       f"and {name} is not usable now",
                       f"{reason}; every network of a host stays on one backend, as networks on different "
                       f"backends are not isolated from each other ({path})")
    return chosen


def _read_choice(path: str) -> str | None:
    from plugin.hoststate import read_private  # a planted choice would split the host's networks

    try:
        name = read_private(path).strip()
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise CniError(BACKEND_UNAVAILABLE, f"cannot read the backend chosen by 'auto' from {path}", str(exc)) from None
    if name not in ("nftables", "iptables"):
        raise CniError(BACKEND_UNAVAILABLE, f"{path} names no backend ({name[:40]!r}): remove it to decide again")
    return name


def _registered(state: str) -> str | None:
    """The one backend the namespace's registered attachments use, if they use exactly one."""
    from plugin.registry import Registry

    used = {a.backend for a in Registry.load(state).attachments.values()}
    return used.pop() if len(used) == 1 else None


def make(name: str):
    """The backend called `name`, usable or not (teardown uses the one that applied the rules)."""
    if name == "nftables":
        from plugin.backends.nftables import NftablesBackend

        return NftablesBackend()
    from plugin.backends.iptables import IptablesBackend

    return IptablesBackend()
