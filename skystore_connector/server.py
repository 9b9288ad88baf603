"""Runs the gateway: one uvicorn listener per endpoint, all over one ``SkyStore``.

The main listener (``config.port``) places its clients by their SigV4 credential scope (else the default
region); each region with a ``port`` gets its own listener whose clients are in that region. Port 0 picks a
free port. Sockets are bound before serving starts, so a taken port is a clear ``PortInUse`` error and the
real ports are known at once (``GatewayServer.endpoint``).

``serve(config)`` runs in the foreground until SIGINT/SIGTERM; ``GatewayServer(...).start()`` serves from a
background thread (tests, ``testing.local_gateway``) until ``stop()``.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import signal
import socket
import threading
from dataclasses import dataclass

import uvicorn

from .config import Config
from .gateway import make_app

log = logging.getLogger(__name__)

GRACEFUL_SHUTDOWN_SECONDS = 5


class PortInUse(OSError):
    """A listener's port is taken (or cannot be bound)."""


@dataclass(frozen=True)
class Listener:
    region: str | None  # None: the main listener
    host: str
    port: int

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def bind_socket(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # proto IPPROTO_TCP (not 0): asyncio turns Nagle off only on sockets that say they are TCP; with it on,
    # a small response waits ~40 ms for the client's delayed ACK
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        # Reuse ports in TIME_WAIT after a restart; a port someone listens on still fails to bind.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(1024)
    except OSError as e:
        sock.close()
        raise PortInUse(f"cannot listen on {host}:{port}: {e.strerror or e}") from e
    sock.setblocking(False)
    return sock


class _Server(uvicorn.Server):
    """uvicorn's server without its own signal handling: ``GatewayServer`` stops all listeners together."""

    @contextlib.contextmanager
    def capture_signals(self):
        yield


class GatewayServer:
    def __init__(self, config: Config, *, store=None, host: str | None = None, sweeper: bool = True,
                 log_level: str = "warning"):
        from .store import SkyStore  # the store pulls in SQLAlchemy and fsspec; import it when serving

        self.config = config
        self.host = host or config.host
        self._sweeper = sweeper
        self._log_level = log_level
        self._sockets: list[tuple[Listener, socket.socket]] = []
        self._servers: list[_Server] = []
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._started = threading.Event()
        self._failure: BaseException | None = None
        self._owns_store = False
        self.store = store
        try:
            self._bind()  # first: a taken port fails before the store opens its database
            if store is None:
                self.store = SkyStore(config)
                self._owns_store = True
        except BaseException:
            self.close()
            raise

    # -- listeners --

    def _bind(self) -> None:
        wanted = [(None, self.config.port)]
        wanted += [(name, rc.port) for name, rc in self.config.regions.items() if rc.port is not None]
        for region, port in wanted:
            sock = bind_socket(self.host, port)
            actual = sock.getsockname()[1]
            self._sockets.append((Listener(region, self.host, actual), sock))

    @property
    def listeners(self) -> list[Listener]:
        return [listener for listener, _ in self._sockets]

    def endpoint(self, region: str | None = None) -> str:
        """The URL a client in ``region`` (either spelling) uses: that region's listener, else the main one."""
        region = self.config.find_region(region) if region is not None else None
        for listener in self.listeners:
            if listener.region == region and region is not None:
                return listener.url
        return self.listeners[0].url

    # -- serving --

    def _make_servers(self) -> list[_Server]:
        servers = []
        for listener, _ in self._sockets:
            app = make_app(self.store, region=listener.region)
            config = uvicorn.Config(app, host=listener.host, port=listener.port, log_level=self._log_level,
                                    access_log=False, lifespan="off", timeout_keep_alive=30,
                                    timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_SECONDS, server_header=False)
            servers.append(_Server(config))
        return servers

    async def serve_async(self) -> None:
        """Serve every listener until ``stop()`` (or a fatal error of one of them)."""
        self._loop = asyncio.get_running_loop()
        self._servers = self._make_servers()
        if self._sweeper:
            self.store.start_sweeper()
        tasks = [asyncio.create_task(server.serve(sockets=[sock]))
                 for server, (_, sock) in zip(self._servers, self._sockets)]
        try:
            while not all(s.started for s in self._servers):
                done = [t for t in tasks if t.done()]
                if done:
                    done[0].result()  # a listener died during startup: raise its error
                    break
                await asyncio.sleep(0.01)
            self._started.set()
            await asyncio.gather(*tasks)
        finally:
            self.request_stop()
            await asyncio.gather(*tasks, return_exceptions=True)
            self._started.set()

    def request_stop(self) -> None:
        for server in self._servers:
            server.should_exit = True

    def run(self) -> None:
        """Serve in the foreground until SIGINT or SIGTERM, then shut down cleanly."""

        async def main() -> None:
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGINT, signal.SIGTERM):
                with contextlib.suppress(NotImplementedError, RuntimeError):
                    loop.add_signal_handler(sig, self.request_stop)
            await self.serve_async()

        try:
            asyncio.run(main())
        finally:
            self.close()

    def start(self, timeout: float = 30.0) -> "GatewayServer":
        """Serve from a background thread; returns once every listener accepts connections."""

        def target() -> None:
            try:
                asyncio.run(self.serve_async())
            except BaseException as e:  # noqa: BLE001 - reported to the starting thread
                self._failure = e
                self._started.set()

        self._thread = threading.Thread(target=target, name="skystore-gateway", daemon=True)
        self._thread.start()
        if not self._started.wait(timeout):
            self.stop()
            raise TimeoutError(f"the gateway did not start within {timeout} s")
        if self._failure is not None:
            self.stop()
            raise RuntimeError(f"the gateway failed to start: {self._failure}") from self._failure
        return self

    def stop(self, timeout: float = GRACEFUL_SHUTDOWN_SECONDS + 5) -> None:
        if self._loop is not None and self._thread is not None:
            with contextlib.suppress(RuntimeError):  # the loop already ended
                self._loop.call_soon_threadsafe(self.request_stop)
            self._thread.join(timeout)
            if self._thread.is_alive():
                log.warning("the gateway thread did not stop within %s s", timeout)
        self.close()

    def close(self) -> None:
        """Release sockets and (when this server made it) the store; idempotent."""
        for _, sock in self._sockets:
            with contextlib.suppress(OSError):
                sock.close()
        if self._sweeper and self.store is not None:
            self.store.stop_sweeper()
        if self._owns_store and self.store is not None:
            self.store.close()
            self._owns_store = False

    def __enter__(self) -> "GatewayServer":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def serve(config: Config, *, host: str | None = None, on_ready=None, log_level: str = "warning") -> None:
    """Run the gateway in the foreground until SIGINT/SIGTERM. ``on_ready(server)`` is called once the
    sockets are bound (before serving), e.g. to print the endpoints."""
    server = GatewayServer(config, host=host, log_level=log_level)
    if on_ready is not None:
        on_ready(server)
    server.run()
