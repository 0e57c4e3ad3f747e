"""Bounded load on 127.0.0.1: many concurrent clients with no error and every completion recorded; a server killed
with SIGKILL mid-load loses no acknowledged completion or rating, and its database opens cleanly."""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import time
from pathlib import Path

import httpx

from tests.serve.conftest import LiveServer, copy_run, start_server

CLIENTS, REQUESTS = 32, 20


def rows(run_dir: Path, query: str) -> list[tuple]:
    with sqlite3.connect(run_dir / "feedback.sqlite") as db:
        return db.execute(query).fetchall()


async def ask(http: httpx.AsyncClient, url: str, i: int, stream: bool) -> str:
    """One completion (streamed or not); its id once the server has answered all of it."""
    body = {"model": "tiny", "messages": [{"role": "user", "content": f"Hello {i}"}], "max_tokens": 8,
            "stream": stream}
    if not stream:
        r = await http.post(f"{url}/v1/chat/completions", json=body)
        r.raise_for_status()
        return str(r.json()["id"])
    cid, done = "", False
    async with http.stream("POST", f"{url}/v1/chat/completions", json=body) as r:
        r.raise_for_status()
        async for line in r.aiter_lines():
            if line == "data: [DONE]":
                done = True
            elif line.startswith("data: {") and not cid:
                cid = httpx.Response(200, content=line[6:]).json()["id"]
    assert done, "a stream ended without [DONE]"
    return cid


def test_32_clients_x_20_requests_all_answered_and_recorded(text_run: Path, tmp_path: Path) -> None:
    server = start_server(copy_run(text_run, tmp_path / "tiny"))
    try:
        async def client(c: int, http: httpx.AsyncClient) -> list[str]:
            return [await ask(http, server.url, c * REQUESTS + k, stream=k % 2 == 1) for k in range(REQUESTS)]

        async def load() -> list[list[str]]:
            limits = httpx.Limits(max_connections=CLIENTS)
            async with httpx.AsyncClient(timeout=300, limits=limits) as http:
                return await asyncio.gather(*[client(c, http) for c in range(CLIENTS)])

        ids = [cid for per_client in asyncio.run(load()) for cid in per_client]
        assert len(set(ids)) == CLIENTS * REQUESTS  # every request answered (an error raises above)
        stored = {r[0] for r in rows(server.run_dir, "SELECT id FROM completions")}
        assert stored == set(ids)  # every completion recorded, nothing else
        metrics = httpx.get(f"{server.url}/metrics").text
        assert "lmpo_request_errors_total{" not in metrics  # not one error of any kind
    finally:
        assert server.stop()


def test_sigkill_mid_load_loses_nothing_acknowledged(text_run: Path, tmp_path: Path) -> None:
    server = start_server(copy_run(text_run, tmp_path / "tiny"))
    answered: list[str] = []
    rated: list[int] = []

    async def client(c: int, http: httpx.AsyncClient, stop: asyncio.Event) -> None:
        k = 0
        while not stop.is_set():
            try:
                cid = await ask(http, server.url, c * 1000 + k, stream=k % 2 == 0)
                answered.append(cid)
                r = await http.post(f"{server.url}/v1/feedback", json={"completion_id": cid, "rating": "up"})
                r.raise_for_status()
                rated.append(int(r.json()["id"]))
            except (httpx.TransportError, AssertionError):  # the server was killed under this request
                return
            k += 1

    async def load() -> None:
        stop = asyncio.Event()
        async with httpx.AsyncClient(timeout=120, limits=httpx.Limits(max_connections=16)) as http:
            tasks = [asyncio.create_task(client(c, http, stop)) for c in range(16)]
            while len(answered) < 120:
                await asyncio.sleep(0.01)
            server.kill()  # mid-load: requests in flight, ratings being written
            stop.set()
            await asyncio.gather(*tasks)

    worker = workers(server.proc.pid)
    assert len(worker) == 1
    asyncio.run(load())
    assert len(answered) >= 120
    deadline = time.monotonic() + 30
    while alive(worker[0]):  # the worker process sees its server gone and exits
        assert time.monotonic() < deadline, "the generation worker outlived its killed server"
        time.sleep(0.1)
    assert rows(server.run_dir, "PRAGMA integrity_check") == [("ok",)]
    stored = {r[0] for r in rows(server.run_dir, "SELECT id FROM completions")}
    assert set(answered) <= stored
    ratings = {r[0] for r in rows(server.run_dir, "SELECT rating_id FROM ratings")}
    assert set(rated) <= ratings
    restarted = start_server(server.run_dir)  # the store opens cleanly and takes new records
    try:
        cid = asyncio.run(_one(restarted))
        assert (cid,) in rows(server.run_dir, "SELECT id FROM completions")
    finally:
        assert restarted.stop()


async def _one(server: LiveServer) -> str:
    async with httpx.AsyncClient(timeout=60) as http:
        return await ask(http, server.url, 0, stream=False)



def workers(pid: int) -> list[int]:
    """The generation worker processes of server ``pid`` (its children started by multiprocessing's spawn, from
    /proc; not multiprocessing's resource tracker)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            parent = int(stat.read_text().rsplit(")", 1)[1].split()[1])
            command = (stat.parent / "cmdline").read_bytes()
        except OSError:  # gone meanwhile
            continue
        if parent == pid and b"spawn_main" in command:
            found.append(int(stat.parent.name))
    return found


def alive(pid: int) -> bool:
    """Whether process ``pid`` runs (an exited one not yet reaped is a zombie: not running)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_a_dead_generation_worker_stops_the_server(text_run: Path, tmp_path: Path) -> None:
    """The model runs in a worker process: if it dies (killed, out of memory), the server says so and shuts down
    (for its supervisor to restart it) instead of accepting requests it cannot answer."""
    server = start_server(copy_run(text_run, tmp_path / "tiny"))
    try:
        worker = workers(server.proc.pid)
        assert len(worker) == 1
        os.kill(worker[0], signal.SIGKILL)
        assert server.proc.wait(timeout=60) in (0, -signal.SIGTERM)
        assert "the generation worker stopped" in server.output(), server.output()
    finally:
        server.kill()
