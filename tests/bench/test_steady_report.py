"""bench.steady's RESULTS.md section: a row per rate, held only with no growing backlog, a p99
under 50 ms and no errors."""

import argparse

from bench.steady import results_section

MACHINE = {"nproc": 2, "cpu": "cpu", "kernel": "k", "python": "3.11", "postgresql": "15", "commit": "abc"}


def _rate(offered, *, growth=0.5, p99=30.0, errors=None):
    return {"offered_per_s": offered, "accepted_per_s": offered - 1, "delivered_per_s_in_window": offered - 2,
            "backlog_start": 0, "backlog_end": 4, "backlog_growth_per_s": growth, "errors": errors or {},
            "p50_accept_to_socket_ms": 5.0, "p99_accept_to_socket_ms": p99}


def test_each_rate_is_a_row_and_held_means_all_three():
    opts = argparse.Namespace(rates=[250.0, 500.0, 1000.0, 2000.0], seconds=60.0, workers=1, gateways=200,
                              concurrency=128)
    section = results_section(opts, [_rate(250), _rate(500, p99=55.0), _rate(1000, growth=12.0),
                                     _rate(2000, errors={"503": 3})], MACHINE)
    assert "`python -m bench.steady --rates 250,500,1000,2000 --seconds 60`" in section
    rows = [line for line in section.splitlines() if line.startswith("| ") and line[2].isdigit()]
    assert [row.rsplit("|", 2)[1].strip() for row in rows] == ["yes", "**no**", "**no**", "**no**"]
    assert "| 250 | 249.0 | 248.0 | 0 → 4 | 0.5 | 5.0 / 30.0 ms | none | yes |" in rows
    assert "| 3 |" in rows[3]
