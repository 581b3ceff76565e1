"""A lean, pipelined RESP connection for the rate limiter's hot path (internal).

redis-py spends most of a command's client-side cost outside the network: packing the
arguments one by one in Python, a pooled connection checked out and back, a timeout
context and a response read per reply. At one check per HTTP request that was the
largest part of what rate limiting cost (~90 µs of CPU per check at 16 requests in
flight). Here one :class:`RespConnection` per Redis node carries every check:

* commands are packed by hiredis (C) and written at the end of the event-loop tick, or,
  while an earlier write is still unanswered, as soon as its replies are in, together
  with everything queued meanwhile: under load that is one ``write`` (one system call,
  which on loopback also pays for waking the server) per round trip, not per request;
* replies are parsed by a hiredis ``Reader`` as they arrive and matched to their callers
  in order (RESP replies come back in the order the commands were sent);
* a command nobody waits for (giving back a concurrency slot) just rides along.

Connection settings (host, port, TLS, credentials, database, timeouts) are taken from the
redis-py client the application configured, so there is one source of truth. No reply
for ``timeout`` seconds while commands are pending aborts the connection (every waiter
gets a ``TimeoutError``), as redis-py's ``socket_timeout`` would.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
from collections import deque
from dataclasses import dataclass
from typing import Any

import hiredis
from redis import exceptions as redis_errors
from redis.asyncio.connection import SSLConnection


def pack_command(command: tuple[Any, ...]) -> bytes:
    """``command`` as one RESP array of bulk strings (packed by hiredis, in C)."""
    packed: bytes = hiredis.pack_command(command)
    return packed


def pack_args(args: tuple[Any, ...]) -> bytes:
    """``args`` as RESP bulk strings, without the array header (to build a command from
    a packed prefix and a per-call tail; the caller writes ``*<count>``)."""
    return pack_command(args).split(b"\r\n", 1)[1]


class ReplyError(Exception):
    """An error reply (``-ERR ...``) from Redis, handed to the caller as a value."""


class UnsupportedConnectionError(Exception):
    """The client's connection options need redis-py's own connection (credential
    providers, Unix sockets); the caller falls back to it."""


@dataclass(frozen=True, slots=True)
class NodeAddress:
    """Where and how to connect to one node (read from a redis-py connection pool)."""

    host: str
    port: int
    db: int = 0
    username: str | None = None
    password: str | None = None
    ssl: ssl.SSLContext | None = None
    connect_timeout: float | None = None
    timeout: float | None = None

    @classmethod
    def from_redis(cls, connection_class: type, kwargs: dict[str, Any]) -> NodeAddress:
        """The address a redis-py ``connection_class(**kwargs)`` would connect to."""
        if kwargs.get("credential_provider") is not None or "path" in kwargs:
            raise UnsupportedConnectionError("credential providers and Unix sockets")
        context = None
        if issubclass(connection_class, SSLConnection):
            context = connection_class(**kwargs).ssl_context.get()
        return cls(
            host=str(kwargs.get("host", "localhost")),
            port=int(kwargs.get("port", 6379)),
            db=int(kwargs.get("db") or 0),
            username=kwargs.get("username"),
            password=kwargs.get("password"),
            ssl=context,
            connect_timeout=kwargs.get("socket_connect_timeout"),
            timeout=kwargs.get("socket_timeout"),
        )


class RespStats:
    """Counts shared by a pipeline's connections: commands, writes (batches) and bytes sent."""

    __slots__ = ("batches", "bytes", "commands")

    def __init__(self) -> None:
        self.batches = 0
        self.commands = 0
        self.bytes = 0


class RespConnection(asyncio.Protocol):
    """One pipelined connection to one node (see the module docstring)."""

    def __init__(self, address: NodeAddress, stats: RespStats) -> None:
        self.address = address
        self.stats = stats
        self.closed = False
        self._loop = asyncio.get_running_loop()
        self._transport: asyncio.Transport | None = None
        self._reader = hiredis.Reader(replyError=ReplyError)
        self._pending: deque[asyncio.Future[Any] | None] = deque()
        self._out: list[bytes] = []
        self._flush_scheduled = False
        self._last_progress = 0.0
        self._watchdog: asyncio.TimerHandle | None = None
        self._lost: BaseException | None = None

    @classmethod
    async def open(
        cls, address: NodeAddress, stats: RespStats, *, scripts: tuple[str, ...] = ()
    ) -> RespConnection:
        """Connect, authenticate, select the database and load ``scripts`` (so a burst
        on a new connection does not meet ``NOSCRIPT``). Setup is not counted in
        ``stats``."""
        loop = asyncio.get_running_loop()
        protocol = cls(address, RespStats())
        connect = loop.create_connection(
            lambda: protocol,
            address.host,
            address.port,
            ssl=address.ssl,
            server_hostname=address.host if address.ssl is not None else None,
        )
        try:
            async with asyncio.timeout(address.connect_timeout):
                await connect
                if address.password is not None:
                    credentials = (address.username, address.password)
                    await protocol._setup("AUTH", *(c for c in credentials if c is not None))
                if address.db:
                    await protocol._setup("SELECT", address.db)
                for text in scripts:
                    await protocol._setup("SCRIPT", "LOAD", text)
        except TimeoutError as exc:
            protocol.close()
            raise redis_errors.TimeoutError(
                f"connecting to {address.host}:{address.port} timed out"
            ) from exc
        except BaseException:
            protocol.close()
            raise
        protocol.stats = stats
        return protocol

    async def _setup(self, *command: Any) -> None:
        reply = await self.submit(pack_command(command))
        if isinstance(reply, ReplyError):
            message = str(reply)
            error = (
                redis_errors.AuthenticationError
                if command[0] == "AUTH" or message.startswith(("NOAUTH", "WRONGPASS"))
                else redis_errors.ResponseError
            )
            raise error(message)

    # -- asyncio.Protocol --------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data: bytes) -> None:
        reader = self._reader
        reader.feed(data)
        pending = self._pending
        self._last_progress = self._loop.time()
        while (reply := reader.gets()) is not False:
            waiter = pending.popleft()
            if waiter is not None and not waiter.done():
                waiter.set_result(reply)
        if self._out and len(pending) == len(self._out) and not self._flush_scheduled:
            self._flush()  # the last write is answered: what queued behind it leaves now

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self._lost is None:
            self._lost = redis_errors.ConnectionError(
                f"connection to {self.address.host}:{self.address.port} lost"
                + (f": {exc}" if exc else "")
            )
        self._fail_pending()

    # -- sending -----------------------------------------------------------------------------
    def submit(self, packed: bytes) -> asyncio.Future[Any]:
        """Queue one packed command for the next write; the future gets its reply (an
        error reply arrives as a :class:`ReplyError` value)."""
        if self.closed:
            raise self._lost or redis_errors.ConnectionError("connection closed")
        future: asyncio.Future[Any] = self._loop.create_future()
        self._pending.append(future)
        self._queue(packed)
        return future

    def push(self, packed: bytes) -> None:
        """Queue one packed command whose reply nobody wants (it is read and dropped)."""
        if self.closed:
            raise self._lost or redis_errors.ConnectionError("connection closed")
        self._pending.append(None)
        self._queue(packed)

    def _queue(self, packed: bytes) -> None:
        self._out.append(packed)
        self.stats.commands += 1
        # Written at the end of this tick, unless a write is still unanswered: then with
        # everything else queued meanwhile, as soon as its replies are in (data_received).
        # Under load that is one write per round trip, whatever the number of requests.
        if not self._flush_scheduled and len(self._pending) == len(self._out):
            self._flush_scheduled = True
            self._loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_scheduled = False
        if self.closed or self._transport is None or not self._out:
            return
        out = self._out
        self._out = []
        data = out[0] if len(out) == 1 else b"".join(out)
        self.stats.batches += 1
        self.stats.bytes += len(data)
        self._transport.write(data)
        if self._watchdog is None and self.address.timeout:
            self._last_progress = self._loop.time()
            self._watchdog = self._loop.call_later(self.address.timeout, self._check_progress)

    def _check_progress(self) -> None:
        # One timer per connection while replies are owed, not one per command.
        self._watchdog = None
        if self.closed or not self._pending:
            return
        timeout = self.address.timeout or 0.0
        idle = self._loop.time() - self._last_progress
        if idle >= timeout:
            self._lost = redis_errors.TimeoutError(
                f"no reply from {self.address.host}:{self.address.port} in {timeout} s"
            )
            self.close()
            return
        self._watchdog = self._loop.call_later(timeout - idle, self._check_progress)

    def close(self) -> None:
        """Close the connection; commands still owed a reply fail with the cause."""
        self.closed = True
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None
        if self._transport is not None:
            self._transport.abort()
        self._fail_pending()

    def _fail_pending(self) -> None:
        error = self._lost or redis_errors.ConnectionError("connection closed")
        while self._pending:
            waiter = self._pending.popleft()
            if waiter is not None and not waiter.done():
                waiter.set_exception(error)
        self._out.clear()

    @property
    def local_address(self) -> str:
        """``host:port`` of this end (as the server's ``CLIENT LIST`` shows it)."""
        name = self._transport.get_extra_info("sockname") if self._transport else None
        return f"{name[0]}:{name[1]}" if name else ""

    @property
    def owed(self) -> int:
        """Commands sent whose replies have not arrived yet."""
        return len(self._pending)
