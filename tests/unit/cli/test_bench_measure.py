"""What the benchmarks report besides the percentiles: latency windows, profile summaries,
CPU by process and the spread of repeated runs."""

from __future__ import annotations

from ledgerflow.cli.bench_measure import (
    cpu_by_group,
    latency_windows,
    repeat_summary,
    summarize_folded,
)

FOLDED = """\
main (app.py:10);apply (apply.py:20);decide (rules.py:30) 6
main (app.py:10);apply (apply.py:21);encode (codec.py:5) 3
main (app.py:11);select (selectors.py:1) 1
not a sample line
"""


def test_a_profile_is_summarised_by_function_across_lines() -> None:
    summary = summarize_folded(FOLDED)
    assert summary["samples"] == 10
    inclusive = dict(summary["inclusive"])  # type: ignore[call-overload]
    own = dict(summary["self"])  # type: ignore[call-overload]
    # apply's two lines are one function; main is on every stack.
    assert inclusive["main (app.py)"] == 1.0
    assert inclusive["apply (apply.py)"] == 0.9
    assert own == {"decide (rules.py)": 0.6, "encode (codec.py)": 0.3, "select (selectors.py)": 0.1}


def test_an_empty_profile_says_so() -> None:
    assert summarize_folded("") == {"samples": 0}


def test_cpu_is_grouped_by_role_then_by_command() -> None:
    before = {1: ("python", 1.0), 2: ("python", 5.0), 3: ("postgres", 2.0), 4: ("java", 0.0)}
    after = {
        1: ("python", 3.5),
        2: ("python", 6.0),
        3: ("postgres", 4.0),
        4: ("java", 1.0),
        5: ("postgres", 0.5),
    }
    roles = {1: "worker transfer", 2: "worker transfer"}
    assert cpu_by_group(before, after, roles) == {
        "worker transfer": 3.5,
        "postgres": 2.5,
        "kafka (java)": 1.0,
    }


def test_latency_windows_tell_a_stall_from_a_steady_tail() -> None:
    # Four windows of 100 samples each at 40 ms, but the third one stalled: 2 samples at 300 ms.
    samples = [(w * 0.25 + i / 400, 40.0) for w in range(4) for i in range(100)]
    samples[250] = (samples[250][0], 300.0)
    samples[251] = (samples[251][0], 300.0)
    windows = latency_windows(samples)
    assert windows is not None
    assert (windows.windows, windows.over_limit) == (4, 1)
    assert (windows.worst_p99_ms, windows.worst_at_s) == (300.0, 0.5)
    assert windows.median_p99_ms == 40.0
    assert windows.as_json()["over_100ms"] == 1
    assert latency_windows([]) is None


def _run(throughput: float, ratio: float | None, p99: float) -> dict[str, object]:
    return {
        "throughput_per_s": throughput,
        "ratio": ratio,
        "latency_ms": {"p50": 1.0, "p99": p99},
        "machine_busy": 0.9,
    }


def test_repeated_runs_are_summarised_by_median_range_and_values() -> None:
    runs = [
        _run(7_600.0, 0.44, 2_100.0),
        _run(8_500.0, 0.53, 1_900.0),
        _run(8_100.0, 0.48, 2_000.0),
    ]
    summary = repeat_summary(runs)
    assert summary["ratio"] == {
        "median": 0.48,
        "min": 0.44,
        "max": 0.53,
        "values": [0.44, 0.53, 0.48],
    }
    assert summary["throughput_per_s"]["median"] == 8_100.0
    assert summary["latency_ms.p99"]["min"] == 1_900.0
    assert summary["latency_ms.p99"]["max"] == 2_100.0


def test_a_figure_missing_from_any_run_is_left_out_rather_than_summarised_from_fewer() -> None:
    # A run at an offered rate has no ceiling, so no ratio; another flow's ratio sits under
    # "transfer". Neither may pass for a median over every run.
    runs = [_run(999.0, None, 50.0), _run(998.0, 0.5, 57.0)]
    summary = repeat_summary(runs)
    assert "ratio" not in summary
    assert "transfer.ratio" not in summary
    assert summary["latency_ms.p99"]["values"] == [50.0, 57.0]
    assert repeat_summary([]) == {}
