"""Reading a `/metrics` page the way Prometheus does: with `prometheus_client`'s own parser."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of the page by (name, sorted labels); the parser rejects a malformed page."""
    found: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def sample(text: str, name: str, **labels: str) -> float | None:
    """One sample's value, None if the page has no such series."""
    return samples(text).get((name, tuple(sorted(labels.items()))))


def total(text: str, name: str, **labels: str) -> float:
    """The sum of the samples named `name` whose labels include `labels` (0 if none)."""
    wanted = set(labels.items())
    return sum(
        value
        for (sample_name, sample_labels), value in samples(text).items()
        if sample_name == name and wanted <= set(sample_labels)
    )
