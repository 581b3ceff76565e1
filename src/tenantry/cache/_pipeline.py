"""Automatic pipelining of hot-path commands (an internal of :mod:`tenantry.cache`).

Every request runs a rate-limit check, one command. Sent through redis-py one by one,
each paid a pooled-connection checkout, Python-side argument packing, a timeout context
and a reply read: ~90 µs of CPU per check, most of what rate limiting cost an API. Here
commands travel over one lean pipelined connection per node (:mod:`._resp`): the
commands issued during one event-loop tick leave in one write, those issued while a
write is unanswered leave together once it is, replies are matched to callers in order,
and a command nobody waits for (giving back a concurrency slot) rides along with the next
write. An idle server sees single commands (no added latency); a busy one sees batches,
one write per round trip. Each command is still its own atomic script run: batching
changes nothing about what a check decides, only how many round trips carry the checks.

On a Redis Cluster the command goes to the node owning its first key's slot (from
redis-py's slot map). A redirection (``MOVED``/``ASK``), ``TRYAGAIN`` or ``CLUSTERDOWN``
reply is retried through redis-py, which follows it and refreshes the map; the routes are
then looked up again. Scripts are addressed by SHA (``EVALSHA``); a server that does not
know one (a restart emptied its script cache) gets it loaded and the command retried.
Connection options redis-py knows and this path does not (credential providers, Unix
sockets) make every command go through redis-py instead, unbatched.

Outages go through the shared :class:`~.degradation.RedisGuard`: while Redis is marked
down, calls fail at once (:class:`~.errors.RedisUnavailableError`) and one probe per
interval tries again.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
from typing import Any

from redis.asyncio import RedisCluster
from redis.crc import key_slot
from redis.exceptions import NoScriptError, ResponseError

from tenantry.cache._resp import (
    NodeAddress,
    ReplyError,
    RespConnection,
    RespStats,
    UnsupportedConnectionError,
    pack_command,
)
from tenantry.cache.client import RedisClient
from tenantry.cache.degradation import UNAVAILABLE, RedisGuard
from tenantry.cache.errors import RedisUnavailableError

logger = logging.getLogger("tenantry.cache")

Command = tuple[Any, ...]
_WHAT = "Redis command"
_REROUTE = ("MOVED", "ASK", "TRYAGAIN", "CLUSTERDOWN")
_PING = pack_command(("PING",))


class AutoPipeline:
    """Sends commands to one Redis deployment, pipelining those issued together."""

    def __init__(self, client: RedisClient, guard: RedisGuard) -> None:
        self.client = client
        self.guard = guard
        self.stats = RespStats()
        self._cluster = isinstance(client, RedisCluster)
        self._lean = True  # False once the client's options need redis-py's connection
        self._scripts: dict[bytes, str] = {}
        self._conn: RespConnection | None = None  # single node
        self._nodes: dict[str, RespConnection] = {}  # cluster: node name -> connection
        self._routes: dict[int, RespConnection] = {}  # cluster: slot -> connection
        self._opening: dict[str, asyncio.Future[RespConnection]] = {}
        self._background: set[asyncio.Task[Any]] = set()

    @property
    def batches(self) -> int:
        """Writes sent so far (each carries one or more commands)."""
        return self.stats.batches

    @property
    def commands(self) -> int:
        """Commands sent so far."""
        return self.stats.commands

    @property
    def connections(self) -> list[RespConnection]:
        """The open connections (one per node used so far)."""
        return self._connections()

    def script(self, text: str) -> bytes:
        """Register a Lua script; returns the SHA to pass to ``EVALSHA``."""
        sha = hashlib.sha1(text.encode(), usedforsecurity=False).hexdigest().encode()
        self._scripts[sha] = text
        return sha

    async def call(self, *command: Any) -> Any:
        """Send ``command`` (with whatever else this tick sends) and return its reply.

        Raises :class:`RedisUnavailableError` when Redis cannot be reached, and the
        command's own error (``ResponseError``) when it fails.
        """
        return await self.call_packed(pack_command(command), command)

    async def call_packed(self, packed: bytes, command: Command) -> Any:
        """:meth:`call` for a command already packed as RESP (``packed`` must encode
        ``command``, which is kept for retries through redis-py)."""
        guard = self.guard
        probe = guard.admit(_WHAT) if not guard.available else False
        try:
            conn = self._ready(command) if self._lean else None
            if conn is None and self._lean:
                try:
                    conn = await self._connect(command)
                except UnsupportedConnectionError:
                    self._lean = False
            if conn is None:
                reply = await self._via_client(command)
            else:
                reply = await conn.submit(packed)
                if type(reply) is ReplyError:
                    reply = await self._recover(conn, command, reply)
        except UNAVAILABLE as exc:
            raise guard.failure(exc, _WHAT) from exc
        finally:
            if probe:
                guard.end_probe()
        if not guard.available:
            guard.succeeded()
        return reply

    def send(self, *command: Any) -> None:
        """Queue ``command`` without waiting for (or caring about) its reply.

        While Redis is marked down the command is dropped (what it would have given back
        expires by itself).
        """
        if not self.guard.available:
            return
        conn = self._ready(command) if self._lean else None
        if conn is not None:
            conn.push(pack_command(command))
            return
        task = asyncio.create_task(self._send_later(command), name="tenantry-redis-send")
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def drain(self) -> None:
        """Wait until every command sent so far has been answered (a ``PING`` behind them
        on each connection: replies come back in order)."""
        while self._background:
            await asyncio.gather(*self._background, return_exceptions=True)
        for conn in self._connections():
            if conn.owed:
                with contextlib.suppress(*UNAVAILABLE):  # a dead one owes nothing more
                    await conn.submit(_PING)

    async def close(self) -> None:
        """Drain, then close the pipeline's connections (at shutdown)."""
        await self.drain()
        for conn in self._connections():
            conn.close()
        self._conn = None
        self._nodes.clear()
        self._routes.clear()

    # -- routing -----------------------------------------------------------------------------
    def _connections(self) -> list[RespConnection]:
        conns = list(self._nodes.values())
        if self._conn is not None:
            conns.append(self._conn)
        return [conn for conn in conns if not conn.closed]

    def _ready(self, command: Command) -> RespConnection | None:
        """The open connection for ``command`` if there is one (no I/O)."""
        # By slot, not key: a tenant's keys share one, so a slot given back after a check
        # travels on the same connection, behind it.
        conn = self._routes.get(key_slot(_key_of(command))) if self._cluster else self._conn
        return conn if conn is not None and not conn.closed else None

    async def _connect(self, command: Command) -> RespConnection:
        client = self.client
        if not isinstance(client, RedisCluster):
            pool = client.connection_pool
            self._conn = await self._open(
                "node",
                lambda: NodeAddress.from_redis(pool.connection_class, pool.connection_kwargs),
            )
            return self._conn
        await client.initialize()
        slot = key_slot(_key_of(command))
        node = client.nodes_manager.get_node_from_slot(slot)
        known = self._nodes.get(node.name)
        conn = known if known is not None and not known.closed else None
        if conn is None:
            conn = self._nodes[node.name] = await self._open(
                node.name,
                lambda: NodeAddress.from_redis(node.connection_class, node.connection_kwargs),
            )
        self._routes[slot] = conn
        return conn

    async def _open(self, name: str, address: Any) -> RespConnection:
        # Single flight: a burst arriving before the connection exists opens it once.
        opening = self._opening.get(name)
        if opening is not None:
            return await asyncio.shield(opening)
        future: asyncio.Future[RespConnection] = asyncio.get_running_loop().create_future()
        self._opening[name] = future
        try:
            scripts = tuple(self._scripts.values())
            conn = await RespConnection.open(address(), self.stats, scripts=scripts)
        except asyncio.CancelledError:
            future.cancel()
            raise
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # retrieved: waiters (if any) re-raise it
            raise
        else:
            future.set_result(conn)
            return conn
        finally:
            del self._opening[name]

    # -- errors --------------------------------------------------------------------------------
    async def _recover(self, conn: RespConnection, command: Command, error: ReplyError) -> Any:
        message = str(error)
        if message.startswith("NOSCRIPT"):
            # rare: the server lost its scripts (restart, SCRIPT FLUSH)
            await self._load(conn, command)
            reply = await conn.submit(pack_command(command))
        elif message.startswith(_REROUTE):
            self._routes.clear()
            return await self._via_client(command)
        else:
            reply = error
        if type(reply) is ReplyError:
            raise ResponseError(str(reply))
        return reply

    async def _load(self, conn: RespConnection, command: Command) -> None:
        text = self._script_of(command)
        reply = await conn.submit(pack_command(("SCRIPT", "LOAD", text)))
        if type(reply) is ReplyError:
            raise ResponseError(str(reply))

    def _script_of(self, command: Command) -> str:
        sha = command[1] if command[0] == "EVALSHA" else None
        text = self._scripts.get(sha) if isinstance(sha, bytes) else None
        if text is None:
            raise NoScriptError(f"unknown script {sha!r}")
        return text

    async def _via_client(self, command: Command) -> Any:
        try:
            return await self.client.execute_command(*command)
        except NoScriptError:
            await self.client.script_load(self._script_of(command))
            return await self.client.execute_command(*command)

    async def _send_later(self, command: Command) -> None:
        try:
            await self.call(*command)
        except (RedisUnavailableError, ResponseError) as exc:
            logger.debug("dropped %s: %s", command[0], exc)


def _key_of(command: Command) -> bytes:
    """The key a command is routed by: an ``EVALSHA``'s first key, else the first argument."""
    key = command[3] if command[0] in ("EVALSHA", "EVAL") and int(command[2]) > 0 else command[1]
    return key if isinstance(key, bytes) else str(key).encode()
