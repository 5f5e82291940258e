"""What the benchmarks report besides time: profile summaries and CPU by process."""

from __future__ import annotations

from ledgerflow.cli.bench_measure import cpu_by_group, summarize_folded

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
