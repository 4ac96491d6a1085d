"""Review of issue 19: the drop log's state files when something else sits at their paths.

`isolation drops` asks whether an agent records by taking a shared lock on drops.lock. A FIFO
there (a careless operator's `mkfifo`, a planted file) made that open(O_RDONLY) wait for a
writer forever: `isolation drops` hung before printing anything. It must answer at once.
"""

import os
import threading

from plugin import droplog


def _returns_within(fn, seconds: float):
    box = []
    t = threading.Thread(target=lambda: box.append(fn()), daemon=True)
    t.start()
    t.join(seconds)
    assert not t.is_alive(), f"{fn} still blocked after {seconds} s"
    return box[0]


def test_a_fifo_at_the_lock_path_does_not_hang_recording(tmp_path):
    os.mkfifo(tmp_path / droplog.RING_LOCK)
    assert _returns_within(lambda: droplog.recording(str(tmp_path)), 3.0) is False


def test_a_symlink_at_the_lock_path_means_nobody_records(tmp_path):
    target = tmp_path / "elsewhere"
    target.write_text("")
    os.symlink(target, tmp_path / droplog.RING_LOCK)
    assert droplog.recording(str(tmp_path)) is False


def test_a_held_lock_means_recording(tmp_path):
    """The positive control: a lock an agent holds is seen as held."""
    import fcntl

    fd = os.open(tmp_path / droplog.RING_LOCK, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        assert droplog.recording(str(tmp_path)) is True
    finally:
        os.close(fd)


# --- who sent it: a port the kernel named outranks a MAC or address anyone can forge --------
from plugin.droplog import identify  # noqa: E402
from plugin.registry import Attachment  # noqa: E402

V = Attachment("net1", "victim", "eth0", "tb1", "vethv", "same-bridge", "nftables", ("10.77.1.3/24",),
               portindex=12, mac="02:00:00:00:00:0b")
W = Attachment("net1", "other", "eth0", "tb1", "vethw", "same-bridge", "nftables", ("10.77.1.4/24",),
               portindex=13, mac="02:00:00:00:00:0c")


def test_a_port_no_container_has_never_blames_the_owner_of_the_forged_mac_and_address():
    """Port 99 is on the bridge but no registered attachment's (an interface attached by hand,
    by another plugin, a VM's tap): it sends with V's MAC and V's address. The kernel said
    the port (bridge-family log: physindev; inet: the forwarding database). Before the fix
    the MAC fallback blamed V with no note at all."""
    for physindev, fdb in ((99, None), (None, 99)):
        sender, note = identify([V, W], "10.77.1.3", "02:00:00:00:00:0b", physindev, fdb)
        assert sender is None, f"blamed {sender.container}"
        assert "spoofed" in note and "net1/victim/eth0" in note and "#99" in note
    sender, note = identify([V, W], "10.77.1.3", None, 99, None)  # the address alone: the same
    assert sender is None and "net1/victim/eth0" in note


def test_the_victims_own_port_still_identifies_it():
    """The positive control: from V's port, with V's MAC and address, it is V."""
    assert identify([V, W], "10.77.1.3", "02:00:00:00:00:0b", 12, None) == (V, None)
    assert identify([V, W], "10.77.1.3", "02:00:00:00:00:0b", None, 12) == (V, None)


# --- `isolation drops --timeout`: a number a socket's timeout accepts, or a usage error -------
import pytest  # noqa: E402

from plugin.cli import parser  # noqa: E402


@pytest.mark.parametrize("bad", ["nan", "inf", "-1"])
def test_drops_timeout_refuses_what_no_socket_timeout_takes(bad, capsys):
    """`--timeout nan` reached socket.settimeout(nan) (ValueError, a traceback) once no agent
    recorded; `inf` an OverflowError. They are usage errors now (exit 2)."""
    with pytest.raises(SystemExit) as exc:
        parser().parse_args(["drops", "--follow", "--timeout", bad])
    assert exc.value.code == 2 and "--timeout" in capsys.readouterr().err


def test_drops_timeout_takes_seconds():
    assert parser().parse_args(["drops", "--follow", "--timeout", "2.5"]).timeout == 2.5
    assert parser().parse_args(["drops", "--follow", "--timeout", "0"]).timeout == 0
