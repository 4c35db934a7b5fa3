"""The fault drill's clients, in a process of their own (so that they do not take the CPU of the
server they measure): `python -m tests.e2e.fault_load URL RATE SECONDS` with the players as
JSON on stdin (`[[user_id, token], ...]`); prints one JSON document with every action's fate.

New actions start at RATE a second for SECONDS (open loop; fewer when the server holds
`MAX_IN_FLIGHT` requests, so that a slow machine slows the drill instead of stretching it).

Each client behaves as the contract says: a 503 is retried with the same nonce (after its
`Retry-After`) until the action is accepted or the client gives up."""

from __future__ import annotations

import itertools
import json
import sys
import time
import uuid
from collections import Counter
from typing import Any

import httpx
import trio

GIVE_UP_AFTER_S = 60.0
MAX_IN_FLIGHT = 400


async def perform(
    client: httpx.AsyncClient, user_id: int, token: str, results: dict[str, Any]
) -> None:
    body = {
        "action_type": "complete_task",
        "action_data": {
            "task_id": f"t-{uuid.uuid4().hex[:8]}",
            "completion_time": int(time.time()),
        },
        "nonce": uuid.uuid4().hex,
    }
    answers: Counter[str] = results["answers"]
    headers = {"Authorization": f"Bearer {token}"}
    outcome = "no answer"
    with trio.move_on_after(GIVE_UP_AFTER_S):
        while True:
            try:
                response = await client.post("/api/v1/actions/perform", json=body, headers=headers)
            except httpx.TransportError as exc:
                answers[f"transport error {type(exc).__name__}"] += 1
                await trio.sleep(1)
                continue
            if response.status_code == 202:
                replayed = response.headers.get("Idempotent-Replayed") == "true"
                answers["202 replayed" if replayed else "202"] += 1
                results["accepted"].append([body["nonce"], user_id, response.json()["action_id"]])
                return
            if response.status_code != 503:
                answers[f"{response.status_code}"] += 1
                outcome = response.text
                break
            outcome = response.json().get("outcome", "none")
            answers[f"503 {outcome}"] += 1
            await trio.sleep(float(response.headers["Retry-After"]))
    results["given_up"].append([body["nonce"], user_id, outcome])


async def main(url: str, rate: float, seconds: float, players: list[list[Any]]) -> dict[str, Any]:
    results: dict[str, Any] = {"accepted": [], "given_up": [], "answers": Counter(), "sent": 0}
    limits = httpx.Limits(max_connections=MAX_IN_FLIGHT, max_keepalive_connections=MAX_IN_FLIGHT)
    in_flight = trio.Semaphore(MAX_IN_FLIGHT)
    async with httpx.AsyncClient(base_url=url, timeout=30, limits=limits) as client:
        start = trio.current_time()
        deadline = start + seconds
        async with trio.open_nursery() as nursery:
            for n in itertools.count():
                await trio.sleep_until(start + n / rate)
                with trio.move_on_at(deadline):
                    await in_flight.acquire()
                if trio.current_time() >= deadline:
                    break
                results["sent"] += 1
                user_id, token = players[n % len(players)]

                async def one(user_id: int = user_id, token: str = token) -> None:
                    try:
                        await perform(client, user_id, token, results)
                    finally:
                        in_flight.release()

                nursery.start_soon(one)
            results["sent_in_s"] = trio.current_time() - start
        results["done_in_s"] = trio.current_time() - start
    return results


if __name__ == "__main__":
    url, rate, seconds = sys.argv[1], float(sys.argv[2]), float(sys.argv[3])
    print(json.dumps(trio.run(main, url, rate, seconds, json.load(sys.stdin))))
