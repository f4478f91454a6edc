"""Ranker training cost against the plain library on the same matrix.

Times ``gbrank``'s ``fit`` (which adds the input guards, the polars-to-numpy matrix and the query
groups) against ``lightgbm.train`` / ``xgboost.train`` called directly on a ready numpy matrix
with the same parameters, for a fixed number of rounds (no early stopping), and prints the time
per iteration, per million rows, and the ratio. Median of ``--repeat`` runs each.

    python bench/bench_rankers.py                  # 1M rows x 50 features, 50 rounds
    python bench/bench_rankers.py --rows 200000 --rounds 20
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import lightgbm as lgb
import numpy as np
import polars as pl
import xgboost as xgb

from gbrank import columns as C
from gbrank.rankers import make_ranker
from gbrank.rankers.base import feature_matrix, query_groups

GAINS = [0.0, 1.0, 2.0, 6.0, 16.0]


def frame(rows: int, features: int, per_user: int, seed: int = 0) -> pl.DataFrame:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(rows, features)).astype(np.float32)
    signal = x[:, :5].sum(axis=1) + rng.normal(scale=2.0, size=rows)
    grade = np.digitize(signal, [1.5, 2.5, 3.5, 4.5]).astype(np.int8)
    data = {f"f{i}": x[:, i] for i in range(features)}
    return pl.DataFrame(
        {
            C.USER: (np.arange(rows) // per_user).astype(np.int32),
            C.ITEM: (np.arange(rows) % per_user).astype(np.int32),
            **data,
            C.GRADE: grade,
        }
    )


def median_seconds(run, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        run()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def bench_backend(
    backend: str, data: pl.DataFrame, names: list[str], args: argparse.Namespace
) -> dict[str, float]:
    """Median seconds of the plain library and of gbrank's ``fit``, printed and returned."""
    ranker = make_ranker(
        backend, "rank", num_boost_round=args.rounds, early_stopping_rounds=0, label_gain=GAINS
    )
    matrix = feature_matrix(data, names)
    groups = query_groups(data)
    grades = data[C.GRADE].to_numpy()
    if backend == "lightgbm":
        params = ranker._lgb_params()  # type: ignore[attr-defined]

        def plain() -> None:
            dataset = lgb.Dataset(matrix, label=grades, group=groups.sizes, free_raw_data=True)
            lgb.train(params, dataset, num_boost_round=args.rounds)
    else:
        params = ranker._xgb_params()  # type: ignore[attr-defined]
        gains = np.asarray(GAINS, dtype=np.float32)[grades]

        def plain() -> None:
            dmatrix = xgb.QuantileDMatrix(matrix, label=gains, qid=groups.qid, nthread=2)
            xgb.train(params, dmatrix, num_boost_round=args.rounds)

    def ours() -> None:
        make_ranker(
            backend, "rank", num_boost_round=args.rounds, early_stopping_rounds=0, label_gain=GAINS
        ).fit(data, names, C.GRADE)

    base = median_seconds(plain, args.repeat)
    mine = median_seconds(ours, args.repeat)
    plain_ms, ours_ms = 1000 * base / args.rounds, 1000 * mine / args.rounds
    print(
        f"{backend:9} {args.rows:,} rows x {args.features} features, {args.rounds} rounds: "
        f"plain {plain_ms:7.1f} ms/iteration, gbrank {ours_ms:7.1f} ms/iteration "
        f"({mine / base:.2f}x), {ours_ms / (args.rows / 1e6):.1f} ms per iteration per 1M rows"
    )
    return {
        "plain_ms_per_iteration": round(plain_ms, 1),
        "gbrank_ms_per_iteration": round(ours_ms, 1),
        "ratio": round(mine / base, 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--features", type=int, default=50)
    parser.add_argument("--per-user", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=50)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    data = frame(args.rows, args.features, args.per_user)
    names = [f"f{i}" for i in range(args.features)]
    out = {
        backend: bench_backend(backend, data, names, args) for backend in ("lightgbm", "xgboost")
    }
    print(json.dumps(out))


if __name__ == "__main__":
    main()
