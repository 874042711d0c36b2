"""Progress of a conformance run on stderr: a tqdm bar on a terminal, plain lines otherwise.

On a terminal the bar shows done/total, elapsed time, the estimated time left, the number of
failures so far and the case running now (then the numerics fingerprint). When the stream is
not a terminal (a CI log, ``2> run.log``, a pipe), carriage-return redraws would turn into
one unreadable line, so instead one plain line is written every ``interval`` seconds::

    conformance: 812/2674 cases (30%), 12.3 s elapsed, ~28 s left, 0 failed, at cast/e5m2/...

and a last line when the run ends. A heartbeat thread keeps both going while one slow case
(or the fingerprint) runs, so a log never goes quiet for longer than ``interval``.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Callable
from typing import IO

__all__ = ["RunProgress", "DEFAULT_INTERVAL_S"]

#: Seconds between two plain progress lines when stderr is not a terminal.
DEFAULT_INTERVAL_S = 5.0

#: Longest case id shown in the bar (ids are hierarchical: the head says the most).
_BAR_ID_CHARS = 48


#: tqdm's size for a terminal that reports 0 x 0.
_UNSIZED = {"ncols": 100, "nrows": 24}


def _seconds(s: float) -> str:
    """``12.3 s`` below a minute, ``4 min 05 s`` above (plain words for a log)."""
    if s < 60:
        return f"{s:.1f} s"
    minutes, secs = divmod(int(round(s)), 60)
    return f"{minutes} min {secs:02d} s"


def _columns(stream: IO[str]) -> int:
    """The terminal's width, 0 where it is unknown (a pseudo-terminal nobody sized)."""
    try:
        return os.get_terminal_size(stream.fileno()).columns
    except (AttributeError, ValueError, OSError):
        return 0


def _is_terminal(stream: IO[str]) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # a closed or minimal stream
        return False


class RunProgress:
    """Reports a run of ``total`` cases, then the fingerprint phase, on ``stream``.

    ``enabled=False`` writes nothing at all. ``terminal`` chooses the tqdm bar (True) or
    the plain lines (False); by default it is whether ``stream`` is a terminal. ``clock``
    (seconds, monotonic) and ``heartbeat`` exist for tests: with ``heartbeat=False`` lines
    are only written when an event (a case starting or ending, a phase) finds ``interval``
    seconds passed since the last line. Use as a context manager, or call :meth:`close`.
    """

    def __init__(
        self,
        total: int,
        enabled: bool = True,
        *,
        stream: IO[str] | None = None,
        terminal: bool | None = None,
        interval: float = DEFAULT_INTERVAL_S,
        clock: Callable[[], float] = time.monotonic,
        heartbeat: bool = True,
    ) -> None:
        self.total = total
        self.enabled = enabled
        self.stream = sys.stderr if stream is None else stream
        self.terminal = _is_terminal(self.stream) if terminal is None else terminal
        self.interval = max(float(interval), 0.0)
        self.clock = clock
        self.done = 0
        self.failed = 0
        self.current = ""
        self.phase = "cases"
        self._start = clock()
        self._last_line = self._start  # the first line comes one interval in
        self._lock = threading.Lock()
        self._closed = False
        self._bar = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        if not enabled:
            return
        if self.terminal:
            from tqdm import tqdm  # only a terminal run needs it loaded

            self._bar = tqdm(
                total=total,
                desc="conformance",
                unit="case",
                file=self.stream,
                # tqdm draws nothing on a terminal of size 0 x 0 (a pseudo-terminal nobody
                # sized): assume 100 x 24 there
                **({"dynamic_ncols": True} if _columns(self.stream) else _UNSIZED),
                bar_format="{desc}: {percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} cases "
                "[{elapsed}<{remaining}]{postfix}",
            )
        if heartbeat and (self.terminal or self.interval > 0):
            self._thread = threading.Thread(
                target=self._beat, name="conformance-progress", daemon=True
            )
            self._thread.start()

    # -- events ----------------------------------------------------------------------

    def start_case(self, case_id: str) -> None:
        """Case ``case_id`` starts running (shown as the current case)."""
        with self._lock:
            self.current = case_id
            self._show(force=False)

    def end_case(self, failed: bool) -> None:
        """The current case ended (``failed``: its verdict was "failed")."""
        with self._lock:
            self.done += 1
            self.failed += bool(failed)
            if self._bar is not None:
                self._bar.update(1)
            self._show(force=False)

    def start_fingerprint(self) -> None:
        """The cases are done; the numerics fingerprint probes run now."""
        with self._lock:
            self.phase = "fingerprint"
            self.current = "numerics fingerprint"
            self._show(force=False)

    def close(self, interrupted: bool = False) -> None:
        """Stop the heartbeat and write the final state (the bar's last redraw and newline,
        or one last plain line ending "finished", or "interrupted"). Safe to call twice."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        with self._lock:
            if self._closed or not self.enabled:
                self._closed = True
                return
            self._closed = True
            self.current = ""
            if self._bar is not None:
                self._bar.set_postfix_str(self._postfix(), refresh=False)
                self._bar.close()
            else:
                self._write_line(final="interrupted" if interrupted else "finished")

    def __enter__(self) -> RunProgress:
        return self

    def __exit__(self, kind: type[BaseException] | None, *exc: object) -> None:
        self.close(interrupted=kind is not None and issubclass(kind, KeyboardInterrupt))

    # -- drawing ---------------------------------------------------------------------

    def line(self, final: str = "") -> str:
        """The plain progress line for the current state (what a non-terminal log gets);
        ``final`` ("finished", "interrupted") ends the last line instead of the time left."""
        elapsed = self.clock() - self._start
        pct = 100 * self.done // self.total if self.total else 100
        text = f"conformance: {self.done}/{self.total} cases ({pct}%), "
        text += f"{_seconds(elapsed)} elapsed"
        if final:
            return text + f", {self.failed} failed, {final}"
        if self.phase == "fingerprint":
            return text + f", {self.failed} failed, now the numerics fingerprint"
        if 0 < self.done < self.total:
            left = elapsed / self.done * (self.total - self.done)
            text += f", ~{_seconds(left)} left"
        text += f", {self.failed} failed"
        return text + (f", at {self.current}" if self.current else "")

    def _postfix(self) -> str:
        now = self.current
        if len(now) > _BAR_ID_CHARS:
            now = now[: _BAR_ID_CHARS - 3] + "..."
        return f"failed {self.failed}" + (f", {now}" if now else "")

    def _show(self, force: bool) -> None:
        """Redraw the bar, or write a line if ``interval`` has passed (lock held)."""
        if not self.enabled or self._closed:
            return
        if self._bar is not None:
            self._bar.set_postfix_str(self._postfix(), refresh=force)
            if force:
                self._bar.refresh()
            return
        now = self.clock()
        if now - self._last_line >= self.interval:
            self._write_line(final="")

    def _write_line(self, final: str) -> None:
        self._last_line = self.clock()
        self.stream.write(self.line(final) + "\n")
        self.stream.flush()

    def _beat(self) -> None:
        """Heartbeat: redraw the bar every second, or check every ``interval`` / 4 whether a
        line is due, until :meth:`close`."""
        period = 1.0 if self.terminal else max(self.interval / 4, 0.05)
        while not self._stop.wait(period):
            with self._lock:
                self._show(force=self.terminal)
