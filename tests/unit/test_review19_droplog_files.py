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
