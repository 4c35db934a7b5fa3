"""The chaos test's clients, in a process of their own: `python -m tests.chaos.chaos_load URLS
TOTAL RATE` (URLS: the API processes' URLs, comma-separated) with the players as JSON on stdin
(`[[user_id, [token for each URL]], ...]`); prints one JSON document with every action's fate.

TOTAL actions start at RATE a second (open loop, at most `MAX_IN_FLIGHT` at once), spread over
the APIs in turn. Each client does what the contract says: a 503 is retried with the same nonce
after its `Retry-After`, a connection that fails is retried on the next API."""

from __future__ import annotations

import json
import sys
import time
import uuid
from collections import Counter
from typing import Any

import httpx
import trio

GIVE_UP_AFTER_S = 90.0
MAX_IN_FLIGHT = 200


async def perform(
    clients: list[httpx.AsyncClient],
    first: int,
    user_id: int,
    tokens: list[str],
    results: dict[str, Any],
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
    outcome = "no answer"
    api = first
    with trio.move_on_after(GIVE_UP_AFTER_S):
        while True:
            headers = {"Authorization": f"Bearer {tokens[api]}"}
            try:
                response = await clients[api].post(
                    "/api/v1/actions/perform", json=body, headers=headers
                )
            except httpx.TransportError as exc:
                answers[f"transport error {type(exc).__name__}"] += 1
                api = (api + 1) % len(clients)
                await trio.sleep(0.5)
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
            answers["503"] += 1
            await trio.sleep(float(response.headers.get("Retry-After", "1")))
    results["given_up"].append([body["nonce"], user_id, outcome])


async def main(urls: list[str], total: int, rate: float, players: list[Any]) -> dict[str, Any]:
    results: dict[str, Any] = {"accepted": [], "given_up": [], "answers": Counter(), "sent": 0}
    limits = httpx.Limits(max_connections=MAX_IN_FLIGHT, max_keepalive_connections=MAX_IN_FLIGHT)
    in_flight = trio.Semaphore(MAX_IN_FLIGHT)
    clients = [httpx.AsyncClient(base_url=url, timeout=30, limits=limits) for url in urls]
    start = trio.current_time()
    async with trio.open_nursery() as nursery:
        for n in range(total):
            await trio.sleep_until(start + n / rate)
            await in_flight.acquire()
            results["sent"] += 1
            user_id, tokens = players[n % len(players)]

            async def one(n: int = n, user_id: int = user_id, tokens: list[str] = tokens) -> None:
                try:
                    await perform(clients, n % len(clients), user_id, tokens, results)
                finally:
                    in_flight.release()

            nursery.start_soon(one)
        results["sent_in_s"] = trio.current_time() - start
    results["done_in_s"] = trio.current_time() - start
    for client in clients:
        await client.aclose()
    return results


if __name__ == "__main__":
    urls, total, rate = sys.argv[1].split(","), int(sys.argv[2]), float(sys.argv[3])
    print(json.dumps(trio.run(main, urls, total, rate, json.load(sys.stdin))))
