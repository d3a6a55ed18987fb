"""Benchmark: many user filters on batches of enriched alerts, one core.

``--filters`` filters (default 1,000) of mixed shapes, drawn at random with random thresholds
(`SHAPES`: cuts on the alert, on features, on the context, IN lists, LIKE on ids, arithmetic on
features, watchlist and watchmap membership over 100 lists, cross-match functions, sky
distances, ORDER BY with LIMIT), all compiled with `broker.domain.filters.compile_filter`, run
on batches of ``--batch`` enriched records (default 10,000) as the filters stage runs them:
`AlertBatch` built from the decoded records (each column once, shared by every filter), then
`FilterSet.run` over every filter, and the passing alerts encoded as ``lanner.filtered`` records.

The records are ``lanner.enriched`` records as the enrich stage makes them (all 144 features,
about a fifth NULL; counterparts in two catalogs; a tenth of alerts in some watchlist),
synthetic values with realistic ranges, and the thresholds make each filter pass at most a few
per cent of alerts, as the check on enable requires (``mean_share`` is the mean). Each batch is
also decoded from Avro first, and that time is reported apart (``decode_ms``): the stage pays it
once per batch whatever the number of filters.

The last line of output is one JSON object::

    {"filters": ..., "batch": ..., "batch_ms": ..., "decode_ms": ..., "columns_ms": ...,
     "encode_ms": ..., "alert_filters_per_s": ..., "passed_per_batch": ...}

``batch_ms`` is the median time of a batch (columns, filters, encoding; decode apart) and
``alert_filters_per_s`` is ``filters * batch / batch_ms``: alerts times filters per second on
one core. Run: ``python bench/filters.py [--filters N] [--batch N] [--repeats N]``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from broker.domain.features import FEATURES
from broker.domain.filters import AlertBatch, Scope, compile_filter
from broker.filterset import FilterSet, filtered_records
from broker.storage.filters import Filter
from broker.streaming import lanner_schemas

CATALOGS = ("gaia", "openngc")
WATCHLISTS = tuple(range(1, 101))
WATCHMAPS = tuple(range(1, 11))
CONTEXTS = ("variable_star", "nuclear", "supernova_like", "agn", "orphan", "unclear")


def records(n: int, seed: int) -> list[dict[str, Any]]:
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        features: dict[str, float | None] = {}
        for f in FEATURES:
            if rng.random() < 0.2:
                features[f.name] = None
            elif f.kind == "int":
                features[f.name] = float(rng.integers(0, 40))
            elif f.name.endswith("mjd"):
                features[f.name] = float(60_000 + rng.uniform(0, 400))
            elif f.name.startswith("days"):
                features[f.name] = float(rng.exponential(60))
            elif "mag" in f.name:
                features[f.name] = float(rng.uniform(15, 25))
            elif f.name.endswith("_rate"):
                features[f.name] = float(rng.normal(0, 0.1))  # mag/d
            elif "chi2" in f.name or "excess" in f.name:
                features[f.name] = float(rng.lognormal(0, 1))
            elif f.name.startswith("colour"):
                features[f.name] = float(rng.normal(0.4, 0.4))
            else:
                features[f.name] = float(rng.normal(0, 1))
        matches = [{"catalog": c, "source_id": f"{c}{i}", "separation_arcsec":
                    float(rng.uniform(0, 5)), "rank": 1} for c in CATALOGS if rng.random() < 0.3]
        watchlists = [{"watchlist_id": int(rng.choice(WATCHLISTS)), "cone_id": int(i),
                       "cone_name": f"cone{i}", "separation_arcsec": float(rng.uniform(0, 3))}
                      for _ in range(1) if rng.random() < 0.1]
        out.append({
            "alert_id": 10**15 + i, "object_id": str(10**12 + i), "survey": "lsst",
            "mjd": float(60_400 + rng.uniform(0, 1)), "band": str(rng.choice(list("ugrizy"))),
            "mag": float(rng.uniform(16, 24.5)), "ra": float(rng.uniform(0, 360)),
            "dec": float(np.degrees(np.arcsin(rng.uniform(-1, 0.3)))), "chunk_id": 1,
            "context": str(rng.choice(CONTEXTS)), "context_catalog": "openngc",
            "context_source_id": f"NGC{i}", "context_separation_arcsec": float(rng.uniform(0, 60)),
            "context_offset_semimajor": float(rng.uniform(0, 3)), "context_reason": "rule",
            "matches": matches, "features": features, "source_timestamp_ms": None,
            "ingested_ms": 0, "enriched_ms": 0, "watchlists": watchlists,
            "watchmaps": [int(rng.choice(WATCHMAPS))] if rng.random() < 0.05 else []})
    return out


def shapes(rng: np.random.Generator) -> list[str]:
    """One filter of each shape, with random thresholds."""
    band = rng.choice(list("ugrizy"))
    b = rng.choice(list("griz"))
    w = int(rng.choice(WATCHLISTS))
    return [
        f"SELECT mag, band WHERE mag < {rng.uniform(16.5, 18):.2f} AND band = '{band}'",
        f"SELECT {b}_rise_rate, days_since_first_det WHERE {b}_rise_rate > "
        f"{rng.uniform(0.1, 0.2):.2f} AND days_since_first_det < {rng.uniform(2, 10):.1f}",
        f"SELECT * WHERE context IN ('supernova_like', 'nuclear') AND "
        f"context_offset_semimajor BETWEEN 0.1 AND {rng.uniform(0.3, 0.6):.2f} AND ndet >= 20",
        f"SELECT * WHERE object_id LIKE '%{int(rng.integers(0, 1000)):03d}'",
        f"SELECT mag - 2.5 * log10(1 + ndet) AS score WHERE mag - 2.5 * log10(1 + ndet) < "
        f"{rng.uniform(13, 14):.2f}",
        f"SELECT watchlist_cone({w}) AS target WHERE in_watchlist({w})",
        f"SELECT * WHERE in_watchmap({int(rng.choice(WATCHMAPS))}) AND mag < 21",
        f"SELECT match_arcsec('gaia') AS sep WHERE matched('gaia') AND match_arcsec('gaia') < "
        f"{rng.uniform(0.2, 1):.2f} AND {b}_chi2_red > {rng.uniform(3, 5):.1f}",
        f"SELECT angular_distance(ra, dec, {rng.uniform(0, 360):.3f}, "
        f"{rng.uniform(-60, 20):.3f}) AS d WHERE angular_distance(ra, dec, "
        f"{rng.uniform(0, 360):.3f}, {rng.uniform(-60, 20):.3f}) < 3",
        f"SELECT mag WHERE colour_g_r < {rng.uniform(-0.5, -0.2):.2f} AND NOT "
        f"matched('openngc') ORDER BY mag LIMIT 10",
    ]


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--filters", type=int, default=1_000)
    parser.add_argument("--batch", type=int, default=10_000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--seed", type=int, default=2)
    args = parser.parse_args(argv)
    rng = np.random.default_rng(args.seed)
    scope = Scope(catalogs=frozenset(CATALOGS), watchlists=frozenset(WATCHLISTS),
                  watchmaps=frozenset(WATCHMAPS))
    texts = [t for _ in range(args.filters // 10 + 1) for t in shapes(rng)][:args.filters]
    filters = FilterSet(store=None, scope=lambda _: scope, time_limit_s=60.0)  # type: ignore[arg-type]
    filters.active = [(Filter(i, "bench", f"f{i}", "", "private", t, 1, "enabled", None, 10**9,
                              None, None), compile_filter(t, scope))  # type: ignore[arg-type]
                      for i, t in enumerate(texts)]
    encoded = [lanner_schemas.encode("enriched", r) for r in records(args.batch, args.seed)]
    timings: dict[str, list[float]] = {"decode": [], "columns": [], "filters": [],
                                       "encode": [], "batch": []}
    passed_total = 0
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        decoded = [lanner_schemas.decode("enriched", v) for v in encoded]
        t1 = time.perf_counter()
        batch = AlertBatch(decoded)
        for name in sorted({c for _, p in filters.active for c in p.columns}):
            batch.column(name)
        t2 = time.perf_counter()
        passed = filters.run(batch)
        t3 = time.perf_counter()
        out = [filtered_records(p, range(p.selection.rows.size), decoded, 0) for p in passed]
        t4 = time.perf_counter()
        passed_total = sum(len(o) for o in out)
        timings["decode"].append(t1 - t0)
        timings["columns"].append(t2 - t1)
        timings["filters"].append(t3 - t2)
        timings["encode"].append(t4 - t3)
        timings["batch"].append(t4 - t1)
    med = {k: statistics.median(v) * 1000 for k, v in timings.items()}
    result = {"filters": args.filters, "batch": args.batch, "batch_ms": round(med["batch"], 1),
              "decode_ms": round(med["decode"], 1), "columns_ms": round(med["columns"], 1),
              "filters_ms": round(med["filters"], 1), "encode_ms": round(med["encode"], 1),
              "alert_filters_per_s": round(args.filters * args.batch / (med["batch"] / 1000)),
              "passed_per_batch": passed_total,
              "mean_share": round(passed_total / args.filters / args.batch, 4)}
    print(f"{args.filters:,} filters on {args.batch:,} alerts: {med['batch']:.0f} ms a batch "
          f"(columns {med['columns']:.0f}, filters {med['filters']:.0f}, encoding "
          f"{med['encode']:.0f}; decoding apart {med['decode']:.0f}); "
          f"{result['alert_filters_per_s']:,} alert-filters/s", flush=True)
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
