"""Reading /metrics of a running process: one scrape, then sums by sample name and labels."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from prometheus_client.parser import text_string_to_metric_families

if TYPE_CHECKING:
    from ledgerflow.harness.processes import ManagedProcess


@dataclass(frozen=True, slots=True)
class Samples:
    """One scrape: (sample name, sorted label pairs) to value."""

    values: dict[tuple[str, tuple[tuple[str, str], ...]], float]

    def total(self, name: str, **labels: str) -> float:
        """The sum of every sample called `name` whose labels include `labels`."""
        wanted = set(labels.items())
        return sum(v for (n, ls), v in self.values.items() if n == name and wanted <= set(ls))

    def has(self, name: str, **labels: str) -> bool:
        wanted = set(labels.items())
        return any(n == name and wanted <= set(ls) for (n, ls) in self.values)

    def labels_of(self, name: str) -> list[dict[str, str]]:
        return [dict(ls) for (n, ls) in self.values if n == name]


def parse(text: str) -> Samples:
    values: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            values[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return Samples(values)


def scrape(process: ManagedProcess) -> Samples:
    status, text = process.get("/metrics")
    assert status == 200, text
    return parse(text)


def metric(process: ManagedProcess, name: str, **labels: str) -> float:
    """Sum of a process' samples called `name` (with these labels), scraped now."""
    return scrape(process).total(name, **labels)
