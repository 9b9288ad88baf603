"""Request and response bodies that stream: ``RequestBody`` pulls the request from the ASGI ``receive``
channel block by block for a store call running in a worker thread; ``ObjectStreamResponse`` sends an
object in pieces read ahead in a worker thread; ``capped`` bounds a body of unannounced size."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator

import anyio
from anyio import to_thread
from starlette.responses import Response

from .. import errors

RECEIVE_BLOCK = 1024 * 1024  # request bytes handed to the store per hop to a worker thread
SEND_BLOCK = 2 * 1024 * 1024  # response bytes per worker-thread read: small enough to stay in cache
DRAIN_LIMIT = 16 * 1024 * 1024  # unread request bytes swallowed before an error so the client sees the error
DRAIN_SECONDS = 2.0
BODY_IDLE_SECONDS = 300.0  # a worker thread waiting this long for request bytes gives up on the upload


class RequestBody:
    """The request body, read from the ASGI ``receive`` channel in blocks of about ``RECEIVE_BLOCK`` bytes.

    ``sync_chunks()`` is consumed in any thread but the event loop's (where the store runs): each block is
    fetched by running ``next_block`` on the event loop, so the body streams with one thread hop per block.
    """

    def __init__(self, receive, loop: asyncio.AbstractEventLoop):
        self._receive = receive
        self._loop = loop
        self.limit: int | None = None  # the most bytes accepted (EntityTooLarge past it)
        self.received = 0
        self.done = False
        self.started = False

    async def next_block(self) -> list[bytes]:
        """The pieces received next, about ``RECEIVE_BLOCK`` bytes in all (not joined: no copy); [] at the end."""
        self.started = True
        pieces, size = [], 0
        while not self.done and size < RECEIVE_BLOCK:
            message = await self._receive()
            if message["type"] == "http.disconnect":
                self.done = True
                raise errors.IncompleteBody("the client disconnected before sending the whole body")
            piece = message.get("body", b"")
            if piece:
                pieces.append(piece)
                size += len(piece)
            self.done = not message.get("more_body", False)
        self.received += size
        if self.limit is not None and self.received > self.limit:
            raise errors.EntityTooLarge("Your proposed upload exceeds the maximum allowed object size.")
        return pieces

    def sync_chunks(self) -> Iterator[bytes]:
        while True:
            future = asyncio.run_coroutine_threadsafe(self.next_block(), self._loop)
            try:
                pieces = future.result(BODY_IDLE_SECONDS)
            except TimeoutError:  # concurrent.futures' TimeoutError is the builtin one since 3.11
                future.cancel()
                raise errors.IncompleteBody(f"no request body bytes for {BODY_IDLE_SECONDS} s") from None
            if not pieces:
                return
            yield from pieces

    async def read_all(self, limit: int) -> list[bytes]:
        blocks = []
        while pieces := await self.next_block():
            blocks.extend(pieces)
            if self.received > limit:
                raise errors.MaxMessageLengthExceeded("Your request was too big.")
        return blocks

    async def drain(self) -> None:
        """Swallow what is left of a modest body (briefly) so the client reads our error rather than a reset
        socket; past ``DRAIN_LIMIT`` bytes or ``DRAIN_SECONDS`` the connection is closed after the error."""
        try:
            with anyio.move_on_after(DRAIN_SECONDS):
                while not self.done and self.received < DRAIN_LIMIT:
                    if not await self.next_block():
                        break
        except Exception:  # noqa: BLE001 - best effort; the error response is what matters
            pass


class ObjectStreamResponse(Response):
    """An object body streamed in pieces of about ``SEND_BLOCK`` bytes, each gathered in one worker-thread hop
    (pieces are sent as the store yields them, never joined: no extra copy of the object). The first batch is
    read before the response starts (``prefetch``), so a failing read is still a proper S3 error."""

    def __init__(self, chunks: Iterator[bytes], status: int, headers: dict[str, str], length: int):
        self._chunks = chunks
        self._first: list[bytes] = []
        self.status_code = status
        self.background = None
        self.body = b""
        raw = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()]
        raw.append((b"content-length", str(length).encode()))
        self.raw_headers = raw

    @staticmethod
    def _read_batch(chunks: Iterator[bytes]) -> list[bytes]:
        pieces, size = [], 0
        for piece in chunks:
            if piece:
                pieces.append(piece)
                size += len(piece)
                if size >= SEND_BLOCK:
                    break
        return pieces

    async def prefetch(self) -> None:
        self._first = await to_thread.run_sync(self._read_batch, self._chunks)

    async def __call__(self, scope, receive, send) -> None:
        await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
        reading: asyncio.Task | None = None
        try:
            batch = self._first
            while batch:
                # read the next batch while this one goes out: disk and socket work overlap
                reading = asyncio.ensure_future(to_thread.run_sync(self._read_batch, self._chunks))
                for piece in batch:
                    await send({"type": "http.response.body", "body": piece, "more_body": True})
                batch = await reading
                reading = None
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        finally:
            if reading is not None:  # the client went away mid-send: let the read finish before closing
                with contextlib.suppress(Exception):
                    await reading
            close = getattr(self._chunks, "close", None)
            if close is not None:
                await to_thread.run_sync(close)



def capped(chunks: Iterator[bytes], limit: int) -> Iterator[bytes]:
    """Pass chunks on until more than ``limit`` bytes went by (a body of unannounced size)."""
    total = 0
    for chunk in chunks:
        total += len(chunk)
        if total > limit:
            raise errors.EntityTooLarge("Your proposed upload exceeds the maximum allowed object size.")
        yield chunk
