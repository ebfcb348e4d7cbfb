"""SIGINT and SIGTERM during training: finish the step, save, stop."""

from __future__ import annotations

import signal
import sys
import threading


class StopRequest:
    """Turns SIGINT/SIGTERM into a flag the training loop checks after each step.

    The step in flight finishes, a checkpoint is written, then the run ends; a second SIGINT
    interrupts at once. Handlers are only installed from the main thread (Python's rule).
    """

    def __init__(self):
        self.signal_name: str | None = None
        self._previous: dict = {}

    def _handle(self, number, frame):
        if self.signal_name is not None and number == signal.SIGINT:
            raise KeyboardInterrupt
        self.signal_name = signal.Signals(number).name
        print(
            f"\n{self.signal_name} received: finishing this step and saving a checkpoint "
            "(press Ctrl-C again to stop at once)",
            file=sys.stderr,
        )

    def __enter__(self) -> StopRequest:
        if threading.current_thread() is threading.main_thread():
            for number in (signal.SIGINT, signal.SIGTERM):
                self._previous[number] = signal.signal(number, self._handle)
        return self

    def __exit__(self, *exc_info) -> None:
        for number, handler in self._previous.items():
            signal.signal(number, handler)
