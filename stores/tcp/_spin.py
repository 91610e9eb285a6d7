"""How the client waits for a reply: spin (poll with MSG_DONTWAIT) or sleep in the kernel.

Measured on gVisor (this project's machines), with the client and the server pinned to CPUs:

- on different CPUs, a recv that has to sleep costs ~70 µs more to wake than spinning for the
  reply (an ``add`` round trip of about 100 µs against 40 µs), so spinning wins, as
  SO_BUSY_POLL does;
- on one CPU, the spinning client delays the server it waits for, and sleeping wins
  (about 12 µs against 16 µs).

``benchmarks/tcp_store.py`` shows both placements (its "same CPU" and "split CPUs" rows).

Which case holds depends on where the scheduler puts the two processes, and changes while a
program runs.  So the client measures both: it uses the faster way for a stint, then tries the
other for a few round trips to refresh its figure.  A probe that loses doubles the stint (up to
:data:`STINT_MAX` replies), so the loser costs little; one that wins switches over.  Spinning
burns a CPU that the server (or other clients) may need, so it must be clearly faster
(:data:`SPIN_MARGIN`) to be kept: with many client processes per CPU, round trips are long
either way and the clients sleep.
"""

from __future__ import annotations

__all__ = ["SpinPolicy"]

#: Round trips spent in the better mode before probing the other, first and at most.
STINT, STINT_MAX = 16, 1 << 12
#: Round trips per probe.
PROBE = 8
#: Spinning is kept only when its average round trip is below this share of sleeping's.
SPIN_MARGIN = 0.9
#: Requests that may block (a wait for a key) are counted only when this quick; longer, they
#: were waiting for a key, not for the server.
MAX_SAMPLE = 1e-3


class SpinPolicy:
    """Chooses, per reply, how long to spin before sleeping: :attr:`budget` seconds (0: sleep).

    ``spin`` is the spin limit (0 turns spinning off).  Feed every round trip's duration to
    :meth:`record`.
    """

    __slots__ = ("_avg", "_left", "_probing", "_stint", "budget", "spin")

    def __init__(self, spin: float) -> None:
        self.spin = spin
        self.budget = spin
        self._avg = [0.0, 0.0]  # EWMA round trip: [sleeping, spinning]; 0 = not measured yet
        self._left = STINT
        self._stint = STINT
        self._probing = False

    def __repr__(self) -> str:
        sleeping, spinning = (f"{a * 1e6:.1f}us" if a else "?" for a in self._avg)
        mode = "spin" if self.budget else "sleep"
        return f"SpinPolicy({mode}; sleeping {sleeping}, spinning {spinning})"

    def record(self, seconds: float, may_block: bool = False) -> None:
        """Account one round trip made with the current :attr:`budget`.  ``may_block``: the
        server may have held the reply back (a wait); then only a quick reply counts
        (:data:`MAX_SAMPLE`)."""
        if not self.spin or (may_block and seconds > MAX_SAMPLE):
            return
        mode = 1 if self.budget else 0
        avg = self._avg
        avg[mode] = seconds if not avg[mode] else avg[mode] + (seconds - avg[mode]) / 8
        self._left -= 1
        if self._left > 0:
            return
        if not self._probing:  # stint over: probe the other way, measuring it afresh
            self._probing, self._left = True, PROBE
            self.budget = 0.0 if mode else self.spin
            avg[1 - mode] = 0.0
            return
        # probe over: keep whichever way is faster
        self._probing = False
        spin_wins = avg[1] < avg[0] * SPIN_MARGIN
        if spin_wins == bool(mode):  # the probe won: switch to it, stints short again
            self._stint = STINT
        else:
            self._stint = min(self._stint * 2, STINT_MAX)
        self.budget = self.spin if spin_wins else 0.0
        self._left = self._stint
