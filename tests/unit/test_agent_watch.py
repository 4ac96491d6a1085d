"""The agent's watch loop, with its event sources and reconcile replaced by recorders: every
kind of event (lost notifications included) leads to one reconcile per burst, and without
events only the periodic check does."""

import threading

from plugin import agent, watch


class _Changes:
    """Stands in for plugin.watch.Changes: hands out the prepared bursts, one per wait()."""

    bursts: list = []

    def __init__(self):
        self.pending = list(self.bursts)
        self.current = set()

    def start(self):
        return {"link": None, "nftables": "PermissionError: not here"}

    def wait(self, timeout):
        if self.pending:
            self.current = self.pending.pop(0)
            return True
        threading.Event().wait(min(timeout, 0.01))
        return False

    def take(self):
        taken, self.current = self.current, set()
        return taken


def _run(monkeypatch, bursts, check_every_s, stop_after):
    monkeypatch.setattr(_Changes, "bursts", bursts)
    monkeypatch.setattr(watch, "Changes", _Changes)
    a = agent.Agent(None, check_every_s)
    a.SETTLE_S = 0
    triggers, logged = [], []
    monkeypatch.setattr(a, "log", logged.append)

    def reconcile(trigger):
        triggers.append(trigger)
        if len(triggers) >= stop_after:
            a.stop.set()

    monkeypatch.setattr(a, "_reconcile", reconcile)
    a._watch()
    return triggers, logged


def test_every_kind_of_event_reconciles_once_per_burst(monkeypatch):
    bursts = [{"link"}, {"nftables"}, {"lost"}, {"link", "nftables"}]
    triggers, logged = _run(monkeypatch, bursts, check_every_s=3600, stop_after=5)
    assert triggers == ["start", "link event", "nftables event", "lost event", "link and nftables event"]
    assert any("no nftables events (PermissionError: not here)" in line for line in logged)
    assert any(line.startswith("watching link events; a full check every 3600 s") for line in logged)


def test_without_events_only_the_periodic_check_reconciles(monkeypatch):
    triggers, _ = _run(monkeypatch, [], check_every_s=0.05, stop_after=3)
    assert triggers == ["start", "periodic check", "periodic check"]



def test_a_socket_that_fails_at_once_is_not_reopened_in_a_busy_loop(monkeypatch):
    # REOPEN_PAUSE_S promises no busy loop, but only paused when opening failed: a socket
    # whose read fails at once was reopened ~100,000 times a second (a core, and a reconcile
    # storm). The first failure still reopens at once (ENOBUFS: events may follow); the
    # second in a row pauses (here: for ever, so the count is exact).
    import time

    opened, paused = [], threading.Semaphore(0)

    class Failing:
        def get(self):
            raise OSError(105, "No buffer space available")

        def close(self):
            pass

    def pause(seconds):
        paused.release()
        threading.Event().wait()

    monkeypatch.setattr(watch, "_open", lambda *args: opened.append(1) or Failing())
    monkeypatch.setattr(time, "sleep", pause)
    changes = watch.Changes()
    assert changes.start() == {"link": None, "nftables": None}
    assert paused.acquire(timeout=10) and paused.acquire(timeout=10), "reopened without ever pausing"
    assert len(opened) == 4 and "lost" in changes.take()
