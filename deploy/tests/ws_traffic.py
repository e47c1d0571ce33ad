#!/usr/bin/env python3
"""Real WebSocket traffic against a Ward pod in open (development) mode.

Each client says hello, joins one room, sends messages and must see every
message of every client, its own included, with an ack for each of its own.
With --hold the connections stay open (so a scraper sees them), each sending
a ping a second, until SIGTERM or SIGINT; --ready-file is written once the
exchange has passed. Then they close normally.

  ws_traffic.py --url ws://127.0.0.1:8080/ws --clients 4 --messages 5
"""

import argparse
import asyncio
import json
import pathlib
import signal
import sys

from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, WebSocketException

TIMEOUT = 10.0


class Client:
    """One connection and the frames it has received."""

    def __init__(self, ws, user):
        self.ws = ws
        self.user = user
        self.frames = asyncio.Queue()
        self.kept = []
        self.reader = asyncio.create_task(self._read())

    async def _read(self):
        try:
            async for raw in self.ws:
                await self.frames.put(json.loads(raw))
        except ConnectionClosed:
            pass
        await self.frames.put({"type": "_closed", "code": self.ws.close_code,
                               "reason": self.ws.close_reason})

    async def send(self, frame):
        await self.ws.send(json.dumps(frame))

    async def expect(self, frame_type, what):
        """The oldest frame of `frame_type`; other frames stay for later."""
        for n, frame in enumerate(self.kept):
            if frame["type"] == frame_type:
                return self.kept.pop(n)
        try:
            return await asyncio.wait_for(self._next(frame_type, what), TIMEOUT)
        except TimeoutError:
            raise AssertionError(f"{self.user}: no {frame_type} within {TIMEOUT}s ({what})")

    async def _next(self, frame_type, what):
        while True:
            frame = await self.frames.get()
            if frame.get("type") == frame_type:
                return frame
            if frame.get("type") in ("error", "_closed"):
                raise AssertionError(f"{self.user}: {what}: got {frame}")
            self.kept.append(frame)


async def open_client(url, user, room):
    ws = await connect(url, open_timeout=TIMEOUT)
    client = Client(ws, user)
    await client.send({"type": "hello", "user": user, "name": user.title()})
    welcome = await client.expect("welcome", "hello")
    assert welcome["user"]["id"] == user, f"welcome names {welcome['user']}"
    await client.send({"type": "join_room", "room": room, "ref": "j"})
    joined = await client.expect("room_joined", "join_room")
    assert joined["room"] == room and joined.get("ref") == "j", f"bad room_joined {joined}"
    return client


async def send_all(client, room, count):
    """Sends `count` messages one by one; returns the acked ids."""
    ids = []
    for n in range(count):
        ref = f"{client.user}-{n}"
        await client.send({"type": "send_message", "room": room, "ref": ref,
                           "text": f"message {n} from {client.user}"})
        ack = await client.expect("ack", f"send_message {ref}")
        assert ack.get("ref") == ref, f"ack for {ack.get('ref')}, wanted {ref}"
        ids.append(ack["id"])
    return ids


async def received_ids(client, total):
    ids = set()
    while len(ids) < total:
        frame = await client.expect("new_message", f"message {len(ids) + 1} of {total}")
        ids.add(frame["message"]["id"])
    return ids


async def exchange(args):
    users = [f"user-{n}" for n in range(args.clients)]
    clients = [await open_client(args.url, u, args.room) for u in users]
    sent = await asyncio.gather(*(send_all(c, args.room, args.messages) for c in clients))
    wanted = {i for ids in sent for i in ids}
    total = args.clients * args.messages
    assert len(wanted) == total, f"{total} messages got {len(wanted)} distinct ids"
    for client in clients:
        got = await received_ids(client, total)
        assert got == wanted, f"{client.user} missed {sorted(wanted - got)}"
    await clients[0].send({"type": "ping", "ref": 7})
    pong = await clients[0].expect("pong", "ping")
    assert pong.get("ref") == 7, f"pong {pong}"
    print(f"{args.clients} clients exchanged {total} messages in room {args.room}")
    return clients


async def keep_pinging(client, stop):
    """A frame a second keeps the frame rates of the pod above zero."""
    while not stop.is_set():
        await client.send({"type": "ping"})
        await client.expect("pong", "ping while holding")
        try:
            await asyncio.wait_for(stop.wait(), 1.0)
        except TimeoutError:
            pass


async def hold(clients, ready_file):
    """Keeps the clients busy until SIGTERM or SIGINT."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    if ready_file:
        pathlib.Path(ready_file).write_text("ready\n")
    await asyncio.gather(*(keep_pinging(c, stop) for c in clients))


async def main(args):
    clients = await exchange(args)
    if args.hold:
        await hold(clients, args.ready_file)
    for client in clients:
        await client.ws.close()
        client.reader.cancel()


def parse():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--url", required=True)
    p.add_argument("--clients", type=int, default=4)
    p.add_argument("--messages", type=int, default=5)
    p.add_argument("--room", default="icu-3")
    p.add_argument("--hold", action="store_true", help="keep connections open until SIGTERM")
    p.add_argument("--ready-file", help="written once the exchange has passed (with --hold)")
    return p.parse_args()


if __name__ == "__main__":
    try:
        asyncio.run(main(parse()))
    except (AssertionError, OSError, WebSocketException) as err:
        print(f"FAIL: {err}", file=sys.stderr)
        sys.exit(1)
