"""MovieLens ratings (GroupLens) in any of their three published layouts.

* ML-100K: ``u.data``, tab-separated ``user item rating timestamp``, no header; movies in
  ``u.item`` (pipe-separated, 19 genre flags), users in ``u.user``.
* ML-1M / ML-10M: ``ratings.dat``, ``UserID::MovieID::Rating::Timestamp``; movies in
  ``movies.dat`` (``MovieID::Title::Genres``), users in ``users.dat`` (ML-1M only).
* ml-latest, ML-20M, ML-25M, ML-32M: ``ratings.csv`` with the header
  ``userId,movieId,rating,timestamp``; movies in ``movies.csv`` (``movieId,title,genres``).

A rating at or above ``options.rating_threshold`` becomes a purchase, any other rating a view;
``raw_event`` keeps the rating as written. Timestamps are epoch seconds. The layout is
recognised from the content of the file, so renamed copies work too. See
docs/datasets/movielens.md.
"""

from __future__ import annotations

from pathlib import Path

import polars as pl

from gbrank import columns as C
from gbrank.data.importers import Imported, ImportOptions, check_columns, find_file
from gbrank.errors import DataError

RATING_FILES = ("ratings.csv", "ratings.dat", "u.data")
ITEM_FILES = {"csv": "movies.csv", "dat": "movies.dat", "tab": "u.item"}
USER_FILES = {"dat": "users.dat", "tab": "u.user"}
CSV_COLUMNS = ("userId", "movieId", "rating", "timestamp")
RATING_FIELDS = ("user", "item", "rating", "timestamp")
# The genre flags of u.item, in column order (as listed in ML-100K's u.genre).
GENRES_100K = (
    "unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime",
    "Documentary", "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance",
    "Sci-Fi", "Thriller", "War", "Western",
)  # fmt: skip
NO_GENRE = ("(no genres listed)", "unknown")
_LINE = "\x1f"  # a separator that never occurs: read whole lines, then split on "::"


def _fail(path: Path, problem: str, **kw: object) -> DataError:
    kw.setdefault("fix", "pass a MovieLens ratings file (u.data, ratings.dat or ratings.csv)")
    return DataError(problem, file=str(path), **kw)  # type: ignore[arg-type]


def _kind(path: Path) -> str:
    """``csv``, ``dat`` or ``tab``, from the first line of a ratings file."""
    with open(path, "rb") as fh:
        first = fh.readline().decode("utf-8", errors="replace").strip()
    if "::" in first:
        return "dat"
    if "\t" in first:
        return "tab"
    if "," in first:
        return "csv"
    raise _fail(path, "not a MovieLens ratings file", values=[first[:80]])


def _utf8(path: Path) -> bytes:
    """The file's bytes as UTF-8 (ML-100K and ML-1M are Latin-1; the later ones UTF-8)."""
    data = path.read_bytes()
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return data.decode("latin-1").encode("utf-8")
    return data


def _split_lines(source: Path | bytes, names: tuple[str, ...]) -> pl.DataFrame:
    """A small ``::``-separated file as string columns ``names`` (short lines give nulls)."""
    lines = pl.read_csv(
        source, has_header=False, separator=_LINE, quote_char=None, schema={"line": pl.String}
    )
    return _split(lines.lazy(), names).collect()


def _split(lines: pl.LazyFrame, names: tuple[str, ...]) -> pl.LazyFrame:
    return (
        lines.select(pl.col("line").str.split_exact("::", len(names) - 1))
        .unnest("line")
        .rename({f"field_{i}": name for i, name in enumerate(names)})
    )


def _scan_ratings(path: Path, kind: str, limit: int) -> pl.LazyFrame:
    """String columns user, item, rating, timestamp."""
    n_rows = limit or None
    if kind == "csv":
        try:
            head = pl.read_csv(path, n_rows=0)
        except pl.exceptions.PolarsError as exc:
            raise _fail(path, f"cannot read as CSV: {exc}".split("\n")[0].rstrip(".")) from exc
        check_columns(head, CSV_COLUMNS, path)
        return (
            pl.scan_csv(path, schema_overrides=dict.fromkeys(CSV_COLUMNS, pl.String), n_rows=n_rows)
            .select(CSV_COLUMNS)
            .rename(dict(zip(CSV_COLUMNS, RATING_FIELDS, strict=True)))
        )
    separator = "\t" if kind == "tab" else _LINE
    names = RATING_FIELDS if kind == "tab" else ("line",)
    lf = pl.scan_csv(
        path,
        has_header=False,
        separator=separator,
        quote_char=None,
        schema=dict.fromkeys(names, pl.String),
        n_rows=n_rows,
    )
    return lf if kind == "tab" else _split(lf, RATING_FIELDS)


def read_events(path: Path, kind: str, options: ImportOptions) -> tuple[pl.DataFrame, list[str]]:
    threshold = options.rating_threshold
    rating = pl.col("rating").str.strip_chars()
    score = rating.cast(pl.Float64, strict=False)
    ids = {"user": C.RAW_USER, "item": C.RAW_ITEM, "timestamp": "seconds"}
    lf = (
        _scan_ratings(path, kind, options.limit)
        .select(
            *(
                pl.col(k).str.strip_chars().cast(pl.Int64, strict=False).alias(v)
                for k, v in ids.items()
            ),
            pl.when(score >= threshold)
            .then(pl.lit("purchase"))
            .when(score.is_not_null())
            .then(pl.lit("view"))
            .alias(C.RAW_EVENT),
            rating.alias("raw_event"),
        )
        .with_columns(pl.any_horizontal(pl.all().is_null()).alias("_bad"))
    )
    counts = lf.select(pl.len().alias("rows"), pl.col("_bad").sum().alias("bad"))
    try:
        frame, counts_df = pl.collect_all([lf.filter(~pl.col("_bad")), counts], engine="streaming")
    except pl.exceptions.PolarsError as exc:
        raise _fail(path, f"cannot parse the file: {exc}".split("\n")[0].rstrip(".")) from exc
    rows, bad = counts_df.row(0)
    if rows and rows == bad:
        sample = _scan_ratings(path, kind, 3).collect().rows()
        raise _fail(path, "no row has a numeric user, item, rating and timestamp", values=sample)
    notes: list[str] = []
    if bad:
        notes.append(f"dropped {bad:,} rows without a numeric user, item, rating or timestamp")
    events = frame.select(
        C.RAW_USER,
        C.RAW_ITEM,
        pl.from_epoch("seconds", time_unit="s").cast(pl.Datetime("ms")).alias(C.RAW_TS),
        C.RAW_EVENT,
        "raw_event",
    )
    n_buy = events.filter(pl.col(C.RAW_EVENT) == "purchase").height
    notes.append(
        f"{n_buy:,} ratings >= {threshold:g} became purchases, {events.height - n_buy:,} "
        "lower ratings views; raw_event keeps the rating"
    )
    return events, notes


def _movies_frame(path: Path, kind: str) -> pl.DataFrame:
    """Columns item_id, title, genres ("A|B|C" or null)."""
    if kind == "csv":
        head = pl.read_csv(path, n_rows=0)
        check_columns(head, ("movieId", "title", "genres"), path)
        raw = pl.read_csv(
            _utf8(path),
            columns=["movieId", "title", "genres"],
            schema_overrides={"movieId": pl.Int64, "title": pl.String, "genres": pl.String},
        )
        return raw.rename({"movieId": C.RAW_ITEM})
    if kind == "dat":
        raw = _split_lines(_utf8(path), ("item", "title", "genres"))
        return raw.select(
            pl.col("item").cast(pl.Int64, strict=False).alias(C.RAW_ITEM), "title", "genres"
        )
    names = ("item", "title", "release", "video_release", "url", *GENRES_100K)
    raw = pl.read_csv(
        _utf8(path),
        has_header=False,
        separator="|",
        quote_char=None,
        schema=dict.fromkeys(names, pl.String),
    )
    flags = [pl.when(pl.col(g) == "1").then(pl.lit(g)) for g in GENRES_100K]
    return raw.select(
        pl.col("item").cast(pl.Int64, strict=False).alias(C.RAW_ITEM),
        "title",
        pl.concat_list(flags).list.drop_nulls().list.join("|").alias("genres"),
    )


def read_items(path: Path, kind: str) -> tuple[pl.DataFrame, list[str]]:
    try:
        movies = _movies_frame(path, kind)
    except pl.exceptions.PolarsError as exc:
        raise _fail(
            path,
            f"cannot parse the movies file: {exc}".split("\n")[0].rstrip("."),
            fix="pass the movies file published with the ratings, unmodified",
        ) from exc
    genres = (
        pl.when(pl.col("genres").is_in(list(NO_GENRE)) | (pl.col("genres") == ""))
        .then(None)
        .otherwise(pl.col("genres"))
    )
    items = (
        movies.drop_nulls(C.RAW_ITEM)
        .with_columns(genres.alias("genres"))
        .select(
            C.RAW_ITEM,
            pl.col("genres").str.split("|").list.first().alias("category"),
            "genres",
            pl.col("title").str.strip_chars(),
            pl.col("title")
            .str.extract(r"\((\d{4})\)\s*$")
            .cast(pl.Int64, strict=False)
            .alias("year"),
        )
        .unique(C.RAW_ITEM, keep="first")
        .sort(C.RAW_ITEM)
    )
    n_none = items["category"].null_count()
    notes = ["item category = the movie's first listed genre"]
    if n_none:
        notes.append(f"{n_none:,} movies have no genre: their category is empty")
    return items, notes


def read_users(path: Path, kind: str) -> pl.DataFrame:
    try:
        if kind == "dat":
            raw = _split_lines(_utf8(path), ("user", "gender", "age", "occupation", "zip"))
        else:
            raw = pl.read_csv(
                _utf8(path),
                has_header=False,
                separator="|",
                quote_char=None,
                schema=dict.fromkeys(("user", "age", "gender", "occupation", "zip"), pl.String),
            )
    except pl.exceptions.PolarsError as exc:
        raise _fail(
            path,
            f"cannot parse the users file: {exc}".split("\n")[0].rstrip("."),
            fix="pass the users file published with the ratings, unmodified",
        ) from exc
    return (
        raw.select(
            pl.col("user").cast(pl.Int64, strict=False).alias(C.RAW_USER),
            pl.col("age").cast(pl.Int64, strict=False),
            "gender",
            "occupation",
        )
        .drop_nulls(C.RAW_USER)
        .unique(C.RAW_USER, keep="first")
        .sort(C.RAW_USER)
    )


def read(src: Path, options: ImportOptions) -> Imported:
    path = find_file(src, RATING_FILES, "MovieLens ratings")
    kind = _kind(path)
    events, notes = read_events(path, kind, options)
    files = [str(path)]
    items = users = None
    items_path = path.parent / ITEM_FILES[kind]
    if items_path.exists():
        items, more = read_items(items_path, kind)
        notes += more
        files.append(str(items_path))
    else:
        notes.append(f"no {ITEM_FILES[kind]} next to {path.name}: no item table")
    users_path = path.parent / USER_FILES[kind] if kind in USER_FILES else None
    if users_path is not None and users_path.exists():
        users = read_users(users_path, kind)
        notes.append(f"users from {users_path.name}: age, gender, occupation (zip code dropped)")
        files.append(str(users_path))
    threshold = f"{options.rating_threshold:g}"
    return Imported(
        events=events,
        items=items,
        users=users,
        horizon_days=14,
        event_mapping={f"rating >= {threshold}": "purchase", f"rating < {threshold}": "view"},
        notes=notes,
        source_files=files,
    )
