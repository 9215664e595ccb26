"""`tw.Server`: a server running in a background thread of this process."""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
from types import TracebackType
from typing import Any

from ._core import ServerCore


class Server:
    """A tensorwire server in a background thread.

    >>> with tw.Server(listen=["ipc:///tmp/tw.sock"]) as server:
    ...     print(server.urls)

    With no listen URL it binds an ipc socket in a fresh private directory. Its polling for
    the next request keeps to the fixed ``spin_us`` unless ``stretch_spin=True``: a thread
    that polls longer would hold this process's interpreter from its other threads.
    """

    def __init__(
        self,
        listen: list[str] | str | None = None,
        device: str = "auto",
        backend: str = "auto",
        **options: Any,
    ) -> None:
        self._tmpdir: str | None = None
        if listen is None:
            self._tmpdir = tempfile.mkdtemp(prefix="tensorwire-")
            listen = [f"ipc://{os.path.join(self._tmpdir, 'tw.sock')}"]
        elif isinstance(listen, str):
            listen = [listen]
        try:
            options.setdefault("stretch_spin", False)
            self._core = ServerCore(list(listen), device=device, backend=backend, **options)
        except BaseException:
            if self._tmpdir is not None:  # a bad option leaves no directory behind
                shutil.rmtree(self._tmpdir, ignore_errors=True)
            raise
        self._thread: threading.Thread | None = None
        self.urls: list[str] = []

    @property
    def url(self) -> str:
        """The first bound URL."""
        return self.urls[0]

    def start(self) -> Server:
        if self._thread is not None:
            raise RuntimeError("server already started")
        self.urls = self._core.bind()
        self._thread = threading.Thread(target=self._run, name="tensorwire-server", daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        try:
            self._core.serve_forever()
        finally:
            self._core.close()

    def stop(self, timeout: float = 10.0) -> None:
        if self._thread is not None:
            self._core.stop()
            self._thread.join(timeout)
            self._thread = None
        if self._tmpdir is not None:
            shutil.rmtree(self._tmpdir, ignore_errors=True)
            self._tmpdir = None

    def __enter__(self) -> Server:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
