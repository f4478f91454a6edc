"""Speed and memory of the candidate sources.

Part 1 times ALS scoring (``ALSSource.generate``: product, seen-item filter, top-k, frame)
against the floor of the dense product alone, ``user_factors @ item_factors.T`` for the same
batches with the same BLAS threads (one, as ALS pins it), and prints the ratio.

Part 2 fits every source kind on a random Zipf-like history (``--events`` events, ``--users``
users, ``--items`` items, 28 days, sessions of a few events minutes apart) and generates
``--k`` candidates for every user, printing fit and generate times, rows and peak RSS.

Every measurement runs in a fresh Python process, so each peak RSS is that run's own; the
figures are medians over ``--repeat`` runs (the peak is the largest).

    python bench/bench_candidates.py --repeat 3
    python bench/bench_candidates.py --part 2 --only covisit_clicks,covisit_buy2buy
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from datetime import datetime, timedelta
from typing import Any

import numpy as np
import polars as pl

AS_OF = datetime(2024, 3, 1)

#: Part 2: name -> (kind, params). Two co-visitation settings, as a shop would run them.
SOURCES: dict[str, tuple[str, dict[str, Any]]] = {
    "popularity": ("popularity", {}),
    "popularity_decay": ("popularity", {"window_days": None, "half_life_days": 7}),
    "history": ("history", {}),
    "als": ("als", {"factors": 64}),
    "bpr": ("bpr", {"factors": 64}),
    "itemknn": ("itemknn", {"similarity": "cosine"}),
    "covisit_clicks": ("covisit", {"time_weight": "linear"}),
    "covisit_buy2buy": (
        "covisit",
        {
            "src_events": ["cart", "purchase"],
            "dst_events": ["cart", "purchase"],
            "max_gap_hours": None,
            "event_weights": [1, 1, 1, 1],
        },
    ),
    "covisit_session": (
        "covisit",
        {"scope": "session", "max_position_gap": 5, "normalize": "popularity"},
    ),
    "segment_category": ("segment_popularity", {"segment": "category"}),
    "segment_user": ("segment_popularity", {"segment": "user_segment"}),
    "repurchase": ("repurchase", {}),
}


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# ------------------------------------------------------------------------------ part 1


def als_child(users: int, items: int, factors: int, n: int) -> dict[str, float]:
    """Fit a one-sweep ALS on random interactions, then time generate and the bare product."""
    import scipy.sparse as sp
    from threadpoolctl import threadpool_limits

    from gbrank.candidates import ALSSource
    from gbrank.candidates._scoring import warm_user_batches

    rng = np.random.default_rng(0)
    per_user = 20
    rows = np.repeat(np.arange(users), per_user)
    cols = rng.zipf(1.3, rows.size) % items  # heavy-tailed, every item has some history
    cols[:items] = np.arange(items)
    history = pl.DataFrame(
        {
            "user": rows.astype(np.int32),
            "item": cols.astype(np.int32),
            "ts": pl.Series([AS_OF - timedelta(days=1)] * rows.size, dtype=pl.Datetime("ms")),
            "event": np.zeros(rows.size, dtype=np.int8),
        }
    )
    source = ALSSource(factors=factors, iterations=1).fit(
        history, n_users=users, n_items=items, as_of=AS_OF
    )
    codes = np.arange(users, dtype=np.int32)
    user_items: sp.csr_matrix = source.user_items_
    user_factors = source.model_.user_factors
    item_factors = np.ascontiguousarray(source.model_.item_factors)
    base = peak_rss_mb()

    t0 = time.perf_counter()
    with threadpool_limits(1, "blas"):
        for batch in warm_user_batches(codes, user_items, n_columns=items):
            user_factors[batch] @ item_factors.T
    floor = time.perf_counter() - t0
    # The same products into one reused buffer, as generate does: no page faults for a fresh
    # block per batch. The stricter floor.
    t0 = time.perf_counter()
    with threadpool_limits(1, "blas"):
        buffer = np.empty((min(codes.size, 4096), items), dtype=np.float32)
        for batch in warm_user_batches(codes, user_items, n_columns=items):
            np.matmul(user_factors[batch], item_factors.T, out=buffer[: batch.size])
    floor_buffer = time.perf_counter() - t0

    t0 = time.perf_counter()
    out = source.generate(codes, n)
    ours = time.perf_counter() - t0
    return {
        "floor": floor,
        "floor_buffer": floor_buffer,
        "generate": ours,
        "rows": out.height,
        "base_mb": base,
        "peak_mb": peak_rss_mb(),
    }


# ------------------------------------------------------------------------------ part 2


def zipf_shop(users: int, items: int, events: int, seed: int = 0) -> dict[str, pl.DataFrame]:
    """A random shop: Zipf-like user activity and item popularity, sessions, attributes."""
    rng = np.random.default_rng(seed)
    activity = 1.0 / np.arange(1, users + 1) ** 0.8
    user = rng.choice(users, events, p=activity / activity.sum())
    popularity = 1.0 / np.arange(1, items + 1) ** 0.9
    item = rng.permutation(items)[rng.choice(items, events, p=popularity / popularity.sum())]
    # Sessions: each user's events fall into sessions of about 6 events, each session at a
    # random start in 28 days and its events a few minutes apart.
    order = np.argsort(user, kind="stable")
    user, item = user[order], item[order]
    rank_in_user = np.arange(events) - np.searchsorted(user, user)
    session = user.astype(np.int64) * 1000 + rank_in_user // 6
    start = rng.random(events) * 28 * 86_400  # used at the session's first event
    first = np.searchsorted(session, session)
    offset = (rank_in_user % 6) * rng.integers(30, 600, events)
    seconds = start[first] + offset
    ts = (AS_OF - timedelta(days=28)).timestamp() * 1000 + seconds * 1000
    ts = np.minimum(ts, AS_OF.timestamp() * 1000 - 1000)
    event = rng.choice(4, events, p=[0.85, 0.10, 0.035, 0.015])
    history = pl.DataFrame(
        {
            "user": user.astype(np.int32),
            "item": item.astype(np.int32),
            "ts": pl.Series(ts.astype(np.int64)).cast(pl.Datetime("ms")),
            "event": event.astype(np.int8),
            "session": session,
        }
    )
    item_table = pl.DataFrame(
        {"item": np.arange(items, dtype=np.int32), "category": rng.integers(0, 200, items)}
    )
    user_table = pl.DataFrame(
        {"user": np.arange(users, dtype=np.int32), "segment": rng.integers(0, 5, users)}
    )
    return {"history": history, "items": item_table, "users": user_table}


def source_child(name: str, users: int, items: int, events: int, k: int) -> dict[str, float]:
    from gbrank.candidates import build_source

    shop = zipf_shop(users, items, events)
    base = peak_rss_mb()
    kind, params = SOURCES[name]
    source = build_source(name, kind, params)
    t0 = time.perf_counter()
    source.fit(
        shop["history"],
        n_users=users,
        n_items=items,
        as_of=AS_OF,
        items=shop["items"],
        users=shop["users"],
    )
    fit = time.perf_counter() - t0
    t0 = time.perf_counter()
    out = source.generate(np.arange(users), k)
    generate = time.perf_counter() - t0
    return {
        "fit": fit,
        "generate": generate,
        "rows": out.height,
        "base_mb": base,
        "peak_mb": peak_rss_mb(),
        "chunks": float(getattr(source, "n_chunks_", 0)),
    }


# ------------------------------------------------------------------------------ driver


def run_child(*args: str) -> dict[str, float]:
    done = subprocess.run(
        [sys.executable, __file__, "--child", *args], check=True, capture_output=True, text=True
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


def median(runs: list[dict[str, float]], key: str) -> float:
    return statistics.median(r[key] for r in runs)


def part1(args: argparse.Namespace) -> None:
    print(
        f"Part 1: ALS generate, {args.als_users} users x {args.als_items} items, "
        f"{args.factors} factors, N = {args.n}, BLAS 1 thread"
    )
    runs = []
    for _ in range(args.repeat):
        runs.append(
            run_child(
                "als", str(args.als_users), str(args.als_items), str(args.factors), str(args.n)
            )
        )
        r = runs[-1]
        print(
            f"  run: floor {r['floor']:.2f}s (reused buffer {r['floor_buffer']:.2f}s), "
            f"generate {r['generate']:.2f}s, ratio {r['generate'] / r['floor']:.2f} "
            f"({r['generate'] / r['floor_buffer']:.2f})",
            flush=True,
        )
    ratios = [r["generate"] / r["floor"] for r in runs]
    strict = [r["generate"] / r["floor_buffer"] for r in runs]
    print(
        f"  median: floor {median(runs, 'floor'):.2f}s (reused buffer "
        f"{median(runs, 'floor_buffer'):.2f}s), generate {median(runs, 'generate'):.2f}s, "
        f"ratio {statistics.median(ratios):.2f} ({statistics.median(strict):.2f}); "
        f"rows {int(runs[0]['rows'])}; peak RSS {max(r['peak_mb'] for r in runs):.0f} MB "
        f"(after fit {runs[0]['base_mb']:.0f} MB)"
    )


def part2(args: argparse.Namespace) -> None:
    names = args.only.split(",") if args.only else list(SOURCES)
    print(
        f"Part 2: fit + generate(k = {args.k}, all users), {args.events} events, "
        f"{args.users} users, {args.items} items"
    )
    print(f"  {'source':<18} {'fit s':>7} {'gen s':>7} {'rows':>10} {'peak MB':>8} {'data MB':>8}")
    for name in names:
        runs = [
            run_child(
                "source", name, str(args.users), str(args.items), str(args.events), str(args.k)
            )
            for _ in range(args.repeat)
        ]
        chunks = f"  ({int(runs[0]['chunks'])} chunks)" if runs[0]["chunks"] else ""
        print(
            f"  {name:<18} {median(runs, 'fit'):>7.2f} {median(runs, 'generate'):>7.2f} "
            f"{int(runs[0]['rows']):>10} {max(r['peak_mb'] for r in runs):>8.0f} "
            f"{runs[0]['base_mb']:>8.0f}{chunks}",
            flush=True,
        )


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        what, *rest = sys.argv[2:]
        if what == "als":
            result = als_child(*(int(x) for x in rest))
        else:
            name, *numbers = rest
            result = source_child(name, *(int(x) for x in numbers))
        print(json.dumps(result))
        return
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--part", choices=["1", "2", "all"], default="all")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--als-users", type=int, default=100_000)
    parser.add_argument("--als-items", type=int, default=30_000)
    parser.add_argument("--factors", type=int, default=64)
    parser.add_argument("--n", type=int, default=100)
    parser.add_argument("--users", type=int, default=50_000)
    parser.add_argument("--items", type=int, default=10_000)
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--k", type=int, default=50)
    parser.add_argument("--only", default="", help="comma-separated part-2 sources")
    args = parser.parse_args()
    if args.part in ("1", "all"):
        part1(args)
    if args.part in ("2", "all"):
        part2(args)


if __name__ == "__main__":
    main()
