"""Keeps azure-ai-ml's chatter out of our output.

The SDK prints a `.` to stdout on every poll of a long-running operation, from the poller's
own thread, and logs INFO lines to stderr through handlers of its own. `rollout ... --format
json` must stay parseable, so every SDK call runs inside `sdk_quiet()`: while a call runs,
stdout writes from its thread and from any thread started during it are dropped, and poller
threads stay muted for as long as they live. The SDK's loggers are held at WARNING.
"""

from __future__ import annotations

import logging
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TextIO

log = logging.getLogger("engine.providers.azure")

_SDK_LOGGER_PREFIX = "azure.ai.ml"
_lock = threading.Lock()


class _MutedThreadsStdout:
    """Stands in for sys.stdout: passes writes through, except from muted threads. Not an
    io.TextIOBase subclass, whose own `encoding`, `fileno` and `isatty` would hide the real
    stream's: everything but `write` and `flush` is the real stream's."""

    def __init__(self, target: TextIO):
        self.target = target
        self.muted: set[threading.Thread] = set()
        self.known: set[threading.Thread] = set()  # threads that existed before the open calls
        self.active = 0  # sdk_quiet blocks running now
        self.dropped = 0

    def _is_muted(self, thread: threading.Thread) -> bool:
        if thread in self.muted:
            return True
        if self.active and thread not in self.known:
            self.muted.add(thread)  # started by an SDK call: a poller
            return True
        return False

    def write(self, text: str) -> int:
        with _lock:
            muted = self._is_muted(threading.current_thread())
            if muted:
                self.dropped += len(text)
        return len(text) if muted else self.target.write(text)

    def flush(self) -> None:
        self.target.flush()

    def __getattr__(self, name: str):  # encoding, fileno, isatty... of the real stream
        return getattr(self.target, name)


def quiet_sdk_loggers() -> None:
    """Hold every azure-ai-ml logger at WARNING; their INFO lines are progress noise."""
    names = [n for n in logging.root.manager.loggerDict if n.startswith(_SDK_LOGGER_PREFIX)]
    for name in [_SDK_LOGGER_PREFIX, *names]:
        logger = logging.getLogger(name)
        if logger.level < logging.WARNING:
            logger.setLevel(logging.WARNING)


@contextmanager
def sdk_quiet() -> Iterator[None]:
    """Run SDK calls so that nothing they or their poller threads print reaches stdout."""
    me = threading.current_thread()
    with _lock:
        proxy = sys.stdout
        if not isinstance(proxy, _MutedThreadsStdout):
            proxy = _MutedThreadsStdout(sys.stdout)
            sys.stdout = proxy
        if not proxy.active:
            proxy.known = set(threading.enumerate())
        proxy.active += 1
        was_muted = me in proxy.muted
        proxy.muted.add(me)
    quiet_sdk_loggers()
    try:
        yield
    finally:
        with _lock:
            proxy.active -= 1
            if not was_muted:
                proxy.muted.discard(me)
            # Poller threads started by the call outlive it while the operation runs on.
            proxy.muted.update(t for t in threading.enumerate() if t not in proxy.known)
            proxy.muted = {t for t in proxy.muted if t.is_alive()}
            if proxy.dropped:
                log.debug("kept %d characters of SDK progress output off stdout", proxy.dropped)
                proxy.dropped = 0
            if not proxy.active and not proxy.muted and sys.stdout is proxy:
                sys.stdout = proxy.target
