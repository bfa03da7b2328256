"""The reliability benchmark's Markdown table: one row per dataset, and the issue's bar counted."""

from __future__ import annotations

from tests.conftest import load_benchmark


def _record(mean: float, lo: float, hi: float, chosen: float = 0.5) -> dict:
    layouts = {"A/no": 1.0, "A/yes": 0.5, "B/no": -0.25, "B/yes": -1.0}
    return {
        "steerability": {
            "mean": mean, "ci95": [lo, hi], "anti_steerable_fraction": 0.4,
            "by_layout": {k: {"mean": v} for k, v in layouts.items()},
            "abs_quantiles": {"0.5": abs(mean) + 1.0},
            "letter_adjusted": {"identified": True, "mean": mean / 2, "ci95": [lo / 2, hi]},
            "linearity": {"median_r2": 0.875},
        },
        "spurious": {"ab": 0.6, "yes_no": 0.1},
        "strength": {"chosen": chosen, "sweep": [
            {"strength": 0.25, "ppl_ratio": 1.2}, {"strength": chosen, "ppl_ratio": 1.75}]},
        "caa_split_half_cosine": 0.2,
    }  # fmt: skip


def test_table_has_a_row_per_dataset_and_counts_the_persona_bar():
    bench = load_benchmark("reliability")
    summary = {
        "command": "python benchmarks/reliability.py --seed 3",
        "seed": 3,
        "vectors": {
            "caa": {"p1": _record(0.3, 0.1, 0.5), "p2": _record(0.1, -0.2, 0.4),
                    "risk": _record(-0.4, -0.6, -0.2)},
            "random": {"p1": _record(0.0, -1.0, 1.0), "p2": _record(0.0, -1.0, 1.0),
                       "risk": _record(0.0, -1.0, 1.0)},
        },
    }  # fmt: skip
    table = bench.markdown_table(summary, persona={"p1", "p2"})
    main = table.split("Letter-adjusted")[0].splitlines()  # the first table
    rows = [line for line in main if line.startswith("| p") or "| risk" in line]
    assert [r.split(" | ")[0] for r in rows] == ["| p1", "| p2", "| risk"]
    p1 = rows[0].split(" | ")
    assert p1[1] == "0.5 (1.75)"  # chosen strength and the perplexity ratio read at it
    assert p1[2] == "+0.30 [+0.10, +0.50]"
    assert p1[3] == "A/no +1.00, A/yes +0.50, B/no -0.25, B/yes -1.00"
    assert p1[5] == "+0.00 [-1.00, +1.00]"  # the random direction's column
    assert p1[6] == "1.30 / 1.00"
    # the AI-risk set's CI excludes 0 too, but the bar counts persona sets only
    assert "excludes 0 on 1 of 2 persona sets" in table
    assert "--seed 3" in table
    assert "| p1 | +0.15 [+0.05, +0.50] · R² 0.88 | +0.00 [-0.50, +1.00] · R² 0.88 |" in table
    summary["vectors"]["random"]["p2"]["steerability"]["letter_adjusted"] = {"identified": False}
    del summary["vectors"]["caa"]["p2"]["steerability"]["linearity"]  # an older record
    assert "| p2 | +0.05 [-0.10, +0.40] | not identified · R² 0.88 |" in bench.markdown_table(
        summary
    )
