"""`python -m benchmarks.anticheat [--seeds N] [--players N] [--hours H]`: the behavioural flags
against simulated populations (`scoreboard.anticheat.simulation`), no services needed.

For each seed: people who play normally and the scripted cheaters; then people alone, as many
as make the same total volume. Prints the people flagged (false positives) and the cheaters
caught, the margins on each threshold (the people closest to it against the cheaters closest to
it), and what the detector costs per attempt and per user remembered. Asserts nothing.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import time
import tracemalloc
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from benchmarks.figures import Table, fmt
from scoreboard.anticheat import simulation
from scoreboard.anticheat.detector import FlagDetector
from scoreboard.anticheat.records import (
    BurstEvidence,
    FlagKind,
    GrowthEvidence,
    RegularityEvidence,
    SharedAddressEvidence,
)
from scoreboard.anticheat.simulation import EXPECTED, Outcome, Scenario
from scoreboard.catalogue import configured_catalogue
from scoreboard.config import AnticheatConfig, load_config

CONFIG_DIR = Path(__file__).resolve().parent.parent / "config"


@dataclass
class Margins:
    """Per user (or address), the value closest to flagging that it ever reached."""

    burst_span_ms: dict[int, int] = field(default_factory=dict)
    regular_cv: dict[int, float] = field(default_factory=dict)
    growth_z: dict[int, float] = field(default_factory=dict)
    # Per address: the most distinct users within the window, and whether a farm account was one.
    address_users: dict[str, tuple[int, bool]] = field(default_factory=dict)


def measure_margins(outcome: Outcome, settings: AnticheatConfig) -> Margins:
    """Replays the run through a detector whose thresholds let everything through and whose
    cool-off is a millisecond: its evidence is every value each rule computed."""
    wide_open = dataclasses.replace(
        settings,
        burst_window_s=1e6,
        regular_max_cv=1e9,
        growth_z=1e-9,
        growth_min_points=0,
        shared_address_users=2,
        cooloff_s=0.001,
    )
    detector = FlagDetector(wide_open, clock=lambda: 0)
    margins = Margins()
    for action in outcome.actions:
        for flag in detector.observe(action):
            evidence, user = flag.evidence, action.user_id
            match evidence:
                case BurstEvidence():
                    span = margins.burst_span_ms.get(user, evidence.span_ms)
                    margins.burst_span_ms[user] = min(span, evidence.span_ms)
                case RegularityEvidence():
                    cv = margins.regular_cv.get(user, evidence.cv)
                    margins.regular_cv[user] = min(cv, evidence.cv)
                case GrowthEvidence():
                    z = margins.growth_z.get(user, evidence.robust_z)
                    margins.growth_z[user] = max(z, evidence.robust_z)
                case SharedAddressEvidence():
                    farmed = any(outcome.roles[u] == "account_farm" for u in evidence.user_ids)
                    most, _ = margins.address_users.get(flag.address, (0, False))
                    margins.address_users[flag.address] = (
                        max(most, evidence.distinct_users),
                        farmed,
                    )
    return margins


def margin_table(outcome: Outcome, settings: AnticheatConfig, seed: int) -> Table:
    margins = measure_margins(outcome, settings)

    def users_of(kind: FlagKind, *, cheating: bool) -> list[int]:
        return [
            user
            for user, role in outcome.roles.items()
            if (kind in EXPECTED[role]) == cheating and (role != "normal") == cheating
        ]

    def closest(values: dict[int, float], users: list[int], *, low: bool) -> float:
        found = [values[user] for user in users if user in values]
        if not found:
            return float("nan")
        return min(found) if low else max(found)

    table = Table(
        f"Margins (seed {seed}): the people closest to each threshold against the cheaters "
        "closest to it",
        ["rule", "threshold", "people (closest)", "cheaters (closest)"],
    )
    spans = {user: float(span) for user, span in margins.burst_span_ms.items()}
    table.add(
        f"burst: span of {settings.burst_actions} attempts (ms)",
        fmt(settings.burst_window_s * 1000, 0),
        fmt(closest(spans, users_of("burst", cheating=False), low=True), 0),
        fmt(closest(spans, users_of("burst", cheating=True), low=False), 0),
    )
    table.add(
        f"regular: CV of {settings.regular_intervals} intervals",
        f"{settings.regular_max_cv:g}",
        fmt(
            closest(margins.regular_cv, users_of("regular_intervals", cheating=False), low=True), 4
        ),
        fmt(
            closest(margins.regular_cv, users_of("regular_intervals", cheating=True), low=False), 5
        ),
    )
    table.add(
        "growth: robust z",
        f"{settings.growth_z:g}",
        fmt(closest(margins.growth_z, users_of("score_growth", cheating=False), low=False), 1),
        fmt(closest(margins.growth_z, users_of("score_growth", cheating=True), low=True), 1),
    )
    people_addresses = [n for n, farmed in margins.address_users.values() if not farmed]
    farm_addresses = [n for n, farmed in margins.address_users.values() if farmed]
    table.add(
        "accounts per address",
        str(settings.shared_address_users),
        str(max(people_addresses, default=0)),
        str(min(farm_addresses)) if farm_addresses else "-",
    )
    table.notes.append(
        "burst and regular: the lower, the more machine-like; growth and accounts: the higher, "
        "the more suspicious"
    )
    return table


def detector_cost(outcome: Outcome, settings: AnticheatConfig) -> tuple[float, float, int]:
    """Microseconds per attempt (the best of three replays), and the bytes the detector keeps
    per user remembered at the end of a replay, with the number of users."""
    best = float("inf")
    for _ in range(3):
        detector = FlagDetector(settings, clock=lambda: 0)
        started = time.perf_counter()
        for action in outcome.actions:
            detector.observe(action)
        best = min(best, (time.perf_counter() - started) / len(outcome.actions))
    gc.collect()
    tracemalloc.start()
    detector = FlagDetector(settings, clock=lambda: 0)
    for action in outcome.actions:
        detector.observe(action)
    gc.collect()
    kept, _peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    users = detector.statistics().users
    return best * 1e6, kept / max(1, users), users


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.anticheat", description=__doc__)
    parser.add_argument("--seeds", type=int, default=5, help="populations to simulate")
    parser.add_argument("--players", type=int, default=1000, help="people per population")
    parser.add_argument("--hours", type=float, default=2.0, help="simulated time per population")
    arguments = parser.parse_args(argv)
    config = load_config(CONFIG_DIR, environ={})
    catalogue = configured_catalogue(config)
    settings = config.anticheat
    flags_table = Table(
        f"Flags over {arguments.players:,} people and the scripted cheaters, "
        f"{arguments.hours:g} h simulated",
        [
            "seed",
            "run",
            "people",
            "attempts",
            "people flagged",
            "by kind",
            "addresses flagged",
            "cheaters caught",
            "sim s",
        ],
    )
    last: Outcome | None = None
    margin_tables = []
    for seed in range(1, arguments.seeds + 1):
        scenario = Scenario(seed=seed, normal_players=arguments.players)
        scenario = dataclasses.replace(scenario, duration_s=arguments.hours * 3600)
        started = time.perf_counter()
        mixed = simulation.run(
            simulation.build(scenario, catalogue), config=config, catalogue=catalogue
        )
        mixed_s = time.perf_counter() - started
        per_person = mixed.attempts["normal"] / arguments.players
        alone = dataclasses.replace(
            scenario,
            normal_players=round(mixed.total_attempts / per_person),
            cheaters_per_role=0,
            farm_accounts=0,
        )
        started = time.perf_counter()
        people_only = simulation.run(
            simulation.build(alone, catalogue), config=config, catalogue=catalogue
        )
        alone_s = time.perf_counter() - started
        for label, outcome, people, seconds in (
            ("with cheaters", mixed, arguments.players, mixed_s),
            ("people only", people_only, alone.normal_players, alone_s),
        ):
            flagged, addresses, by_kind = outcome.false_positives()
            cheaters = [u for u, role in outcome.roles.items() if EXPECTED[role]]
            caught = sum(
                1
                for user in cheaters
                if EXPECTED[outcome.roles[user]]
                <= {f.kind for f in outcome.flags if f.user_id == user}
            )
            farm_caught = len(outcome.address_flags(farmed=True))
            cheaters_cell = (
                f"{caught}/{len(cheaters)}, farm {min(farm_caught, 1)}/1" if cheaters else "-"
            )
            flags_table.add(
                seed,
                label,
                f"{people:,}",
                f"{outcome.total_attempts:,}",
                f"{flagged} ({flagged / people:.2%})",
                ", ".join(f"{kind} {n}" for kind, n in sorted(by_kind.items())) or "-",
                addresses,
                cheaters_cell,
                fmt(seconds, 1),
            )
        margin_tables.append(margin_table(mixed, settings, seed))
        last = mixed
    print(flags_table.render(), end="\n\n")
    for table in margin_tables:
        print(table.render(), end="\n\n")
    if last is not None:
        micros, per_user, users = detector_cost(last, settings)
        cost = Table(
            "Detector cost (replaying the last run with cheaters, flags on)",
            ["attempts", "µs per attempt", "attempts/s", "users kept", "bytes per user kept"],
        )
        cost.add(
            f"{len(last.actions):,}",
            fmt(micros, 1),
            f"{1e6 / micros:,.0f}",
            f"{users:,}",
            f"{per_user:,.0f}",
        )
        cost.notes.append(
            f"at max_users = {settings.max_users:,}, about "
            f"{per_user * settings.max_users / 2**20:,.0f} MiB (each user with an address)"
        )
        print(cost.render())


if __name__ == "__main__":
    main()
