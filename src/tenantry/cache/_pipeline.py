"""Automatic pipelining of hot-path commands (an internal of :mod:`tenantry.cache`).

Every request runs a rate-limit check, one command. Sent one by one, concurrent requests
each pay a full client round trip: a pooled connection, a write, a wake-up, a read. Here
a command issued while nothing is in flight is sent at once by its caller; commands
issued while one is on the wire wait for it and then leave together, as one pipeline.
An idle server sees single commands (no added latency); a busy one sees batches, and the
cost per command falls with load. Each command is still its own atomic script run: batching
changes nothing about what a check decides, only how many round trips carry the checks.

Scripts are addressed by SHA (``EVALSHA``); a server that does not know one (a restart
emptied its script cache) gets it loaded and the command retried.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Sequence
from typing import Any

from redis.exceptions import NoScriptError

from tenantry.cache.client import RedisClient
from tenantry.cache.degradation import UNAVAILABLE, RedisGuard
from tenantry.cache.errors import RedisUnavailableError

Command = tuple[Any, ...]
_Entry = tuple[Command, "asyncio.Future[Any] | None"]


class AutoPipeline:
    """Sends commands to one client, batching those that arrive while others are in flight."""

    def __init__(self, client: RedisClient, guard: RedisGuard, *, max_batch: int = 256) -> None:
        self.client = client
        self.guard = guard
        self.max_batch = max_batch
        self._queue: list[_Entry] = []
        self._busy = False  # a command or batch is on the wire
        self._pump: asyncio.Task[None] | None = None
        self._scripts: dict[bytes, str] = {}
        self.batches = 0
        self.commands = 0

    def script(self, text: str) -> bytes:
        """Register a Lua script; returns the SHA to pass to ``EVALSHA``."""
        sha = hashlib.sha1(text.encode(), usedforsecurity=False).hexdigest().encode()
        self._scripts[sha] = text
        return sha

    async def call(self, *command: Any) -> Any:
        """Send ``command`` (in the next batch) and return its reply.

        Raises :class:`RedisUnavailableError` when Redis cannot be reached.
        """
        if self._busy:
            future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
            self._queue.append((command, future))
            return await future
        self._busy = True  # nothing in flight: this caller sends its command itself
        try:
            replies = await self.guard.run(lambda: self._execute([command]), "Redis command")
        finally:
            self._hand_off()
        if isinstance(replies[0], Exception):
            raise replies[0]
        return replies[0]

    def send(self, *command: Any) -> None:
        """Queue ``command`` without waiting for (or caring about) its reply."""
        self._queue.append((command, None))
        if not self._busy:
            self._busy = True
            self._hand_off()

    async def drain(self) -> None:
        """Wait until every queued command has been sent (used at shutdown)."""
        while self._pump is not None:
            await asyncio.shield(self._pump)

    def _hand_off(self) -> None:
        # Commands queued behind the one just sent leave together, from a task of their own.
        if self._queue:
            self._pump = asyncio.create_task(self._run(), name="tenantry-redis-pipeline")
        else:
            self._busy = False

    async def _run(self) -> None:
        try:
            while self._queue:
                batch = self._queue[: self.max_batch]
                del self._queue[: self.max_batch]
                await self._flush(batch)
        finally:
            self._pump = None
            self._busy = False

    async def _flush(self, batch: list[_Entry]) -> None:
        commands = [command for command, _ in batch]
        try:
            replies = await self.guard.run(lambda: self._execute(commands), "Redis command")
        except RedisUnavailableError as exc:
            for _, future in batch:
                if future is not None and not future.done():
                    future.set_exception(RedisUnavailableError(str(exc)))
            return
        except Exception as exc:  # a bug (bad arguments, say): every caller hears of it
            for _, future in batch:
                if future is not None and not future.done():
                    future.set_exception(exc)
            return
        for (_, future), reply in zip(batch, replies, strict=True):
            if future is None or future.done():
                continue
            if isinstance(reply, Exception):
                future.set_exception(reply)
            else:
                future.set_result(reply)

    async def _execute(self, commands: Sequence[Command]) -> list[Any]:
        self.batches += 1
        self.commands += len(commands)
        if len(commands) == 1:
            try:
                return [await self.client.execute_command(*commands[0])]
            except NoScriptError:
                await self._load(commands[0])
                return [await self.client.execute_command(*commands[0])]
            except UNAVAILABLE:
                raise
            except Exception as exc:  # the command's own error, as a pipeline reports it
                return [exc]
        pipe = self.client.pipeline(transaction=False)
        for command in commands:
            pipe.execute_command(*command)
        replies: list[Any] = await pipe.execute(raise_on_error=False)
        missing = [i for i, reply in enumerate(replies) if isinstance(reply, NoScriptError)]
        for i in missing:  # rare: the server lost its scripts (restart, SCRIPT FLUSH)
            await self._load(commands[i])
            replies[i] = await self.client.execute_command(*commands[i])
        return replies

    async def _load(self, command: Command) -> None:
        sha = command[1] if command[0] == "EVALSHA" else None
        text = self._scripts.get(sha) if isinstance(sha, bytes) else None
        if text is None:
            raise NoScriptError(f"unknown script {sha!r}")
        await self.client.script_load(text)
