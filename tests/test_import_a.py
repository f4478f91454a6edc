"""Dataset importers: RetailRocket, Taobao, OTTO, H&M and MovieLens, from small fixtures written
in each dataset's published layout."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from typer.testing import CliRunner

from gbrank import columns as C
from gbrank.cli import app
from gbrank.config import DataConfig, load_config
from gbrank.data.importers import ImportOptions, ImportResult, import_dataset
from gbrank.data.io import load_events, load_table
from gbrank.errors import DataError, MissingInputError


def write(path: Path, text: str, encoding: str = "utf-8") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(text.encode(encoding))
    return path


def run(fmt: str, src: Path, out: Path, **options: object) -> ImportResult:
    """Import, then check the output against the data contract and the config loader."""
    result = import_dataset(fmt, src, out, ImportOptions(**options))  # type: ignore[arg-type]
    loaded = load_events(DataConfig(events=str(out / "events.parquet")))
    assert loaded.summary.rows == result.events
    assert loaded.summary.per_event_type == result.per_event_type
    cfg = load_config(out / "gbrank.toml")
    assert cfg.data.events == str((out / "events.parquet").resolve())
    assert cfg.folds.horizon_days == result.horizon_days
    if (out / "items.parquet").exists():
        assert cfg.data.items == str((out / "items.parquet").resolve())
        load_table(cfg.data.items, C.RAW_ITEM, "items", loaded.items)
    events = pl.read_parquet(out / "events.parquet")
    assert events.schema[C.RAW_TS] == pl.Datetime("ms")
    assert set(events[C.RAW_EVENT].unique()) <= set(C.EVENT_TYPES)
    return result


def events_of(out: Path) -> pl.DataFrame:
    return pl.read_parquet(out / "events.parquet")


# --------------------------------------------------------------------------- retailrocket

RR_EVENTS = """\
timestamp,visitorid,event,itemid,transactionid
1433221332117,257597,view,355908,
1433224214164,992329,view,248676,
1433221999827,111016,view,318965,
1433221955914,483717,view,253185,
1433221337106,951259,view,367447,
1433223291897,972639,view,22556,
1433220899221,257597,view,355908,
1433221999830,111016,addtocart,10572,
1433222000000,257597,addtocart,355908,
1433222100000,992329,addtocart,248676,
1433222200000,257597,transaction,355908,4000
1433222300000,111016,transaction,10572,4001
1433222400000,111016,view,,
"""
# rows 1-7: 7 views; rows 8-10: 3 carts; rows 11-12: 2 purchases; row 13: no item (dropped)

RR_PROPS_1 = """\
timestamp,itemid,property,value
1435460400000,355908,categoryid,1173
1436065200000,355908,categoryid,1338
1435460400000,355908,available,1
1435460400000,248676,categoryid,491
1435460400000,999999,categoryid,1
1435460400000,248676,888,1116173 n24.000
"""
# 355908: category 1173 then 1338 (latest wins); 999999 never occurs in the events

RR_PROPS_2 = """\
timestamp,itemid,property,value
1435460400000,10572,categoryid,1173
1435460400000,253185,790,n5160.000
1431226800000,253185,available,1
1435460400000,253185,available,0
"""

RR_TREE = """\
categoryid,parentid
1338,1173
1173,
491,679
"""


def retailrocket_folder(root: Path) -> Path:
    write(root / "events.csv", RR_EVENTS)
    write(root / "item_properties_part1.csv", RR_PROPS_1)
    write(root / "item_properties_part2.csv", RR_PROPS_2)
    write(root / "category_tree.csv", RR_TREE)
    return root


def test_retailrocket(tmp_path: Path) -> None:
    src = retailrocket_folder(tmp_path / "rr")
    result = run("retailrocket", src, tmp_path / "out")
    assert result.per_event_type == {"view": 7, "cart": 3, "purchase": 2}
    assert result.events == 12
    assert any("dropped 1 rows" in n for n in result.notes)
    ev = events_of(tmp_path / "out")
    assert ev.schema[C.RAW_USER] == pl.Int64 and ev.schema[C.RAW_ITEM] == pl.Int64
    first = ev.row(0, named=True)
    assert (first[C.RAW_USER], first[C.RAW_ITEM]) == (257597, 355908)
    assert first[C.RAW_TS] == datetime(2015, 6, 2, 5, 2, 12, 117000)
    assert (first[C.RAW_EVENT], first["raw_event"]) == ("view", "view")
    raw_of = dict(zip(ev[C.RAW_EVENT], ev["raw_event"], strict=True))
    assert raw_of == {"view": "view", "cart": "addtocart", "purchase": "transaction"}

    items = pl.read_parquet(tmp_path / "out" / "items.parquet")
    assert items.columns == [C.RAW_ITEM, "category", "parent_category", "available"]
    rows = {r[C.RAW_ITEM]: r for r in items.iter_rows(named=True)}
    assert 999999 not in rows  # not in the events
    assert (rows[355908]["category"], rows[355908]["parent_category"]) == (1338, 1173)
    assert rows[355908]["available"] == 1
    assert (rows[248676]["category"], rows[248676]["parent_category"]) == (491, 679)
    assert (rows[10572]["category"], rows[10572]["parent_category"]) == (1173, None)
    assert (rows[253185]["category"], rows[253185]["available"]) == (None, 0)  # latest: 0


def test_retailrocket_events_only_and_limit(tmp_path: Path) -> None:
    src = write(tmp_path / "rr" / "events.csv", RR_EVENTS)
    result = run("retailrocket", src, tmp_path / "out", limit=5)
    assert result.events == 5 and result.per_event_type == {"view": 5}
    assert not (tmp_path / "out" / "items.parquet").exists()
    assert any("no item table" in n for n in result.notes)


def test_retailrocket_wrong_files(tmp_path: Path) -> None:
    bad = write(tmp_path / "a" / "events.csv", "user,item,when\n1,2,3\n")
    with pytest.raises(DataError, match=r"events\.csv.*timestamp"):
        import_dataset("retailrocket", bad.parent, tmp_path / "out")
    odd = write(tmp_path / "b" / "events.csv", RR_EVENTS.replace("addtocart", "wishlist"))
    with pytest.raises(DataError, match="wishlist"):
        import_dataset("retailrocket", odd, tmp_path / "out")
    (tmp_path / "empty").mkdir()
    with pytest.raises(MissingInputError, match="events.csv"):
        import_dataset("retailrocket", tmp_path / "empty", tmp_path / "out")
    with pytest.raises(MissingInputError):
        import_dataset("retailrocket", tmp_path / "nowhere", tmp_path / "out")


# --------------------------------------------------------------------------- taobao

# No header. The documented period is [2017-11-25, 2017-12-04) at UTC+8, i.e.
# [1511539200, 1512316800) in epoch seconds.
TAOBAO = """\
1,2268318,2520377,pv,1511544070
1,2333346,2520771,pv,1511561733
1,2576651,149192,pv,1511572885
1,3830808,4181361,fav,1511593493
1,4365585,2520377,cart,1511596146
7,2268318,999,pv,1511600000
100,2268318,2520377,pv,1511680000
100,2268318,2520377,buy,1511680485
100,4365585,2520377,pv,1511539200
100,4365585,2520377,buy,1512316799
100,1,1,pv,1511539199
100,1,1,pv,1512316800
5,5,5,pv,-2134949234
"""
# kept: rows 1-10 -> 6 views (pv), 2 carts (fav, cart), 2 purchases (buy);
# dropped: rows 11-13 (one second early, the exclusive end, a broken clock)


def test_taobao(tmp_path: Path) -> None:
    src = write(tmp_path / "tb" / "UserBehavior.csv", TAOBAO)
    result = run("taobao", src.parent, tmp_path / "out")
    assert result.per_event_type == {"view": 6, "cart": 2, "purchase": 2}
    assert any("dropped 3 of 13 rows" in n for n in result.notes)
    assert any("1 'fav'" in n for n in result.notes)
    assert result.horizon_days == 1
    ev = events_of(tmp_path / "out")
    first = ev.row(0, named=True)
    assert (first[C.RAW_USER], first[C.RAW_ITEM]) == (1, 2268318)
    assert first[C.RAW_TS] == datetime(2017, 11, 24, 17, 21, 10)  # 01:21:10 at UTC+8
    fav = ev.filter(pl.col("raw_event") == "fav").row(0, named=True)
    assert (fav[C.RAW_ITEM], fav[C.RAW_EVENT]) == (3830808, "cart")
    assert ev[C.RAW_TS].min() == datetime(2017, 11, 24, 16)
    assert ev[C.RAW_TS].max() == datetime(2017, 12, 3, 15, 59, 59)
    items = pl.read_parquet(tmp_path / "out" / "items.parquet")
    cats = dict(zip(items[C.RAW_ITEM], items["category"], strict=True))
    assert cats[2268318] == 2520377  # its latest row, not the earlier 999
    assert cats[3830808] == 4181361
    assert 1 not in cats and 5 not in cats  # only in dropped rows


def test_taobao_header_limit_and_wrong_file(tmp_path: Path) -> None:
    src = write(
        tmp_path / "h" / "UserBehavior.csv",
        "user_id,item_id,category_id,behavior_type,timestamp\n" + TAOBAO,
    )
    result = run("taobao", src, tmp_path / "out", limit=4)
    assert result.per_event_type == {"view": 3, "cart": 1}
    assert any("header" in n for n in result.notes)
    bad = write(tmp_path / "bad" / "UserBehavior.csv", "1,2,pv\n")
    with pytest.raises(DataError, match=r"UserBehavior\.csv.*5 comma-separated"):
        import_dataset("taobao", bad, tmp_path / "out2")
    odd = write(tmp_path / "odd" / "UserBehavior.csv", "1,2,3,like,1511544070\n")
    with pytest.raises(DataError, match="like"):
        import_dataset("taobao", odd, tmp_path / "out3")


# --------------------------------------------------------------------------- otto

OTTO: list[dict[str, Any]] = [
    {
        "session": 0,
        "events": [
            {"aid": 1517085, "ts": 1659304800025, "type": "clicks"},
            {"aid": 1563459, "ts": 1659304904511, "type": "clicks"},
            {"aid": 1309446, "ts": 1659367439426, "type": "carts"},
            {"aid": 1309446, "ts": 1659367500000, "type": "orders"},
        ],
    },
    {"session": 1, "events": []},  # no events: contributes nothing
    {
        "session": 12899779,
        "events": [
            {"aid": 59625, "ts": 1661724000278, "type": "clicks"},
            {"aid": 59625, "ts": 1661724026000, "type": "carts"},
        ],
    },
]
# 3 clicks, 2 carts, 1 order


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    return write(path, "\n".join(json.dumps(r) for r in rows) + "\n")


def test_otto(tmp_path: Path) -> None:
    folder = tmp_path / "otto"
    write_jsonl(folder / "train.jsonl", OTTO)
    write_jsonl(folder / "test.jsonl", OTTO[:1])
    result = run("otto", folder, tmp_path / "out")
    assert result.per_event_type == {"click": 3, "cart": 2, "purchase": 1}
    assert result.users == 2
    assert any("train.jsonl only" in n for n in result.notes)
    ev = events_of(tmp_path / "out")
    assert ev[C.RAW_SESSION].to_list() == ev[C.RAW_USER].to_list()
    last = ev.row(-1, named=True)
    assert (last[C.RAW_USER], last[C.RAW_ITEM], last["raw_event"]) == (12899779, 59625, "carts")
    assert last[C.RAW_TS] == datetime(2022, 8, 28, 22, 0, 26)
    assert ev.row(0, named=True)[C.RAW_TS] == datetime(2022, 7, 31, 22, 0, 0, 25000)


def test_otto_seconds_limit_and_wrong_file(tmp_path: Path) -> None:
    seconds = [
        {"session": s["session"], "events": [{**e, "ts": e["ts"] // 1000} for e in s["events"]]}
        for s in OTTO
    ]
    src = write_jsonl(tmp_path / "s" / "test.jsonl", seconds)
    result = run("otto", src, tmp_path / "out", limit=3)
    assert result.per_event_type == {"click": 2, "cart": 1}
    assert any("seconds" in n for n in result.notes)
    assert events_of(tmp_path / "out")[C.RAW_TS][0] == datetime(2022, 7, 31, 22, 0, 0)
    flat = write_jsonl(tmp_path / "f" / "train.jsonl", [{"user": 1, "item": 2}])
    with pytest.raises(DataError, match=r"train\.jsonl.*'events' list"):
        import_dataset("otto", flat, tmp_path / "out2")
    odd = write_jsonl(
        tmp_path / "o" / "train.jsonl",
        [{"session": 1, "events": [{"aid": 1, "ts": 1, "type": "x"}]}],
    )
    with pytest.raises(DataError, match="unknown event types"):
        import_dataset("otto", odd, tmp_path / "out3")


# --------------------------------------------------------------------------- h&m

CUST_A = "000058a12d5b43e67d225668fa1f8d618c13dc232df0cad8ffe7ad4a1091e318"
CUST_B = "00007d2de826758b65a93dd24ce629ed66842531df6699338c5570910a014cc2"
CUST_C = "00083cda041544b2fbb0e0d2905ad17da7cf1007526fb4c73235dccbbc132280"
HM_TX = f"""\
t_dat,customer_id,article_id,price,sales_channel_id
2018-09-20,{CUST_A},0663713001,0.0508305084745762,2
2018-09-20,{CUST_A},0541518023,0.0304915254237288,2
2018-09-20,{CUST_B},0505221004,0.0152372881355932,2
2018-09-20,{CUST_B},0505221004,0.0152372881355932,2
2018-09-21,,0505221004,0.0152372881355932,1
2018-09-22,{CUST_C},0688537004,0.0169322033898305,1
2018-09-29,{CUST_A},0663713001,0.0508305084745762,2
"""
# 7 rows: row 5 has no customer (dropped); rows 3-4 are two units of one article
ARTICLE_HEADER = (
    "article_id,product_code,prod_name,product_type_no,product_type_name,product_group_name,"
    "graphical_appearance_no,graphical_appearance_name,colour_group_code,colour_group_name,"
    "perceived_colour_value_id,perceived_colour_value_name,perceived_colour_master_id,"
    "perceived_colour_master_name,department_no,department_name,index_code,index_name,"
    "index_group_no,index_group_name,section_no,section_name,garment_group_no,"
    "garment_group_name,detail_desc"
)
HM_ARTICLES = f"""\
{ARTICLE_HEADER}
0108775015,0108775,Strap top,253,Vest top,Garment Upper body,1010016,Solid,09,Black,4,Dark,5,Black,1676,Jersey Basic,A,Ladieswear,1,Ladieswear,16,Womens Everyday Basics,1002,Jersey Basic,"Jersey top with narrow shoulder straps."
0663713001,0663713,Atlanta Push Body Harlow,283,Underwear body,Underwear,1010016,Solid,09,Black,4,Dark,5,Black,1338,Expressive Lingerie,B,Lingeries/Tights,1,Ladieswear,61,Womens Lingerie,1017,"Under-, Nightwear","Lace push-up body, with underwired, moulded cups."
0541518023,0541518,Rae Push (Melbourne) 2p,306,Bra,Underwear,1010016,Solid,43,Dark Red,2,Medium Dusty,18,Red,1338,Expressive Lingerie,B,Lingeries/Tights,1,Ladieswear,61,Womens Lingerie,1017,"Under-, Nightwear",Lace push-up bras
0505221004,0505221,Inca jumper,252,Sweater,Garment Upper body,1010016,Solid,51,Light Pink,1,Dusty Light,4,Pink,1334,Knitwear,A,Ladieswear,1,Ladieswear,15,Womens Everyday Collection,1003,Knitwear,Jumper in a soft knit
0688537004,0688537,Bennet kaftan,262,Dress,Garment Full body,1010016,Solid,73,Dark Blue,4,Dark,2,Blue,1312,Dresses,D,Divided,2,Divided,53,Divided Collection,1013,Dresses Ladies,Kaftan in woven fabric
"""
HM_CUSTOMERS = f"""\
customer_id,FN,Active,club_member_status,fashion_news_frequency,age,postal_code
{CUST_A},,,ACTIVE,NONE,49,52043ee2162cf5aa7ee79974281641c6f11a68d276429a91f8ca0d4b6efa8100
{CUST_B},1.0,1.0,ACTIVE,Regularly,25,2973abc54daa8a5f8ccfe9362140c63247c5eee03f1d93f4c830291c32bc3057
{CUST_C},,,PRE-CREATE,None,,64f17e6a330a85798e4998f62d0930d14db8db1c054af6c9090f7dd3e38380dc
00000dbacae5abe5e23885899a1fa44253a17956c6d1c3d25f88aa139fdfc657,1.0,1.0,ACTIVE,Regularly,32,8d6f45050876d059c830a0fe63f1a4c022de279bb68ce3294a7400ba57e2bb75
"""


def hm_folder(root: Path) -> Path:
    write(root / "transactions_train.csv", HM_TX)
    write(root / "articles.csv", HM_ARTICLES)
    write(root / "customers.csv", HM_CUSTOMERS)
    return root


def test_hm(tmp_path: Path) -> None:
    src = hm_folder(tmp_path / "hm")
    result = run("hm", src, tmp_path / "out")
    assert result.per_event_type == {"purchase": 6}
    assert (result.users, result.items) == (3, 4)
    notes = " | ".join(result.notes)
    assert "dropped 1 rows with no customer id" in notes
    assert "day resolution" in notes and "binary" in notes
    assert "1 rows repeat" in notes
    ev = events_of(tmp_path / "out")
    assert ev.schema[C.RAW_USER] == pl.String and ev.schema[C.RAW_ITEM] == pl.Int64
    first = ev.row(0, named=True)
    assert (first[C.RAW_USER], first[C.RAW_ITEM]) == (CUST_A, 663713001)
    assert first[C.RAW_TS] == datetime(2018, 9, 20)
    assert first[C.RAW_VALUE] == pytest.approx(0.0508305084745762)
    assert first[C.RAW_QUANTITY] == 1.0 and first["raw_event"] == "transaction"
    assert ev.filter(pl.col(C.RAW_USER) == CUST_C)[C.RAW_TS].to_list() == [datetime(2018, 9, 22)]

    items = pl.read_parquet(tmp_path / "out" / "items.parquet")
    assert items[C.RAW_ITEM].to_list() == [505221004, 541518023, 663713001, 688537004]
    top = items.filter(pl.col(C.RAW_ITEM) == 663713001).row(0, named=True)
    assert top["category"] == 283 and top["product_group_name"] == "Underwear"
    assert (top["department_no"], top["colour_group_code"], top["garment_group_no"]) == (
        1338,
        9,
        1017,
    )
    assert any("kept 4 of 5 articles" in n for n in result.notes)

    users = pl.read_parquet(tmp_path / "out" / "users.parquet")
    assert "postal_code" not in users.columns
    assert users.height == 3  # the fourth customer never buys
    a = users.filter(pl.col(C.RAW_USER) == CUST_A).row(0, named=True)
    assert (a["fn"], a["active"], a["age"], a["fashion_news_frequency"]) == (0, 0, 49, "NONE")
    c = users.filter(pl.col(C.RAW_USER) == CUST_C).row(0, named=True)
    assert (c["club_member_status"], c["fashion_news_frequency"], c["age"]) == (
        "PRE-CREATE",
        "NONE",
        None,
    )


def test_hm_limit_and_wrong_file(tmp_path: Path) -> None:
    src = write(tmp_path / "hm" / "transactions_train.csv", HM_TX)
    result = run("hm", src.parent, tmp_path / "out", limit=3)
    assert result.per_event_type == {"purchase": 3}
    assert not (tmp_path / "out" / "users.parquet").exists()
    bad = write(tmp_path / "bad" / "transactions_train.csv", "date,customer,sku\n1,2,3\n")
    with pytest.raises(DataError, match=r"transactions_train\.csv.*t_dat"):
        import_dataset("hm", bad.parent, tmp_path / "out2")
    with pytest.raises(MissingInputError, match="transactions_train.csv"):
        import_dataset("hm", tmp_path / "out", tmp_path / "out3")


# --------------------------------------------------------------------------- movielens

# ML-100K: user item rating timestamp, tab-separated
U_DATA = "196\t242\t3\t881250949\n186\t302\t3\t891717742\n22\t377\t1\t878887116\n196\t1\t5\t874965758\n22\t1\t4\t875071561\n"
U_ITEM = (
    "1|Toy Story (1995)|01-Jan-1995||http://us.imdb.com/M/title-exact?Toy%20Story%20(1995)"
    "|0|0|0|1|1|1|0|0|0|0|0|0|0|0|0|0|0|0|0\n"
    "242|Kolya (1996)|24-Jan-1997||http://us.imdb.com/M/title-exact?Kolya%20(1996)"
    "|0|0|0|0|0|1|0|0|0|0|0|0|0|0|0|0|0|0|0\n"
    "267|unknown||||1|0|0|0|0|0|0|0|0|0|0|0|0|0|0|0|0|0|0\n"
)
U_USER = "22|25|M|writer|40206\n186|39|F|executive|00000\n196|49|M|writer|55105\n"


def test_movielens_100k(tmp_path: Path) -> None:
    folder = tmp_path / "ml-100k"
    write(folder / "u.data", U_DATA)
    write(folder / "u.item", U_ITEM, encoding="latin-1")
    write(folder / "u.user", U_USER)
    result = run("movielens", folder, tmp_path / "out")
    # ratings 5 and 4 reach the default threshold 4.0; 3, 3, 1 do not
    assert result.per_event_type == {"purchase": 2, "view": 3}
    assert result.horizon_days == 14
    ev = events_of(tmp_path / "out")
    row = ev.filter(pl.col(C.RAW_ITEM) == 1, pl.col(C.RAW_USER) == 196).row(0, named=True)
    assert (row[C.RAW_EVENT], row["raw_event"]) == ("purchase", "5")
    assert row[C.RAW_TS] == datetime(1997, 9, 22, 22, 2, 38)
    items = pl.read_parquet(tmp_path / "out" / "items.parquet")
    toy = items.filter(pl.col(C.RAW_ITEM) == 1).row(0, named=True)
    assert (toy["category"], toy["genres"], toy["year"]) == (
        "Animation",
        "Animation|Children's|Comedy",
        1995,
    )
    assert items.filter(pl.col(C.RAW_ITEM) == 267)["category"].to_list() == [None]
    users = pl.read_parquet(tmp_path / "out" / "users.parquet")
    assert users.columns == [C.RAW_USER, "age", "gender", "occupation"]
    assert users.row(0) == (22, 25, "M", "writer")


# ML-1M: UserID::MovieID::Rating::Timestamp; movies.dat is Latin-1
RATINGS_DAT = """\
1::1193::5::978300760
1::661::3::978302109
1::914::3::978301968
2::1193::4::978298413
2::3105
2::1357::5::978298709
"""
MOVIES_DAT = """\
1193::One Flew Over the Cuckoo's Nest (1975)::Drama
661::James and the Giant Peach (1996)::Animation|Children's|Musical
73::Misérables, Les (1995)::Drama|Musical
"""
USERS_DAT = "1::F::1::10::48067\n2::M::56::16::70072\n"


def test_movielens_1m(tmp_path: Path) -> None:
    folder = tmp_path / "ml-1m"
    write(folder / "ratings.dat", RATINGS_DAT)
    write(folder / "movies.dat", MOVIES_DAT, encoding="latin-1")
    write(folder / "users.dat", USERS_DAT)
    result = run("movielens", folder / "ratings.dat", tmp_path / "out", rating_threshold=5.0)
    # threshold 5: two 5s are purchases; 3, 3, 4 views; the short line is dropped
    assert result.per_event_type == {"purchase": 2, "view": 3}
    assert any("dropped 1 rows" in n for n in result.notes)
    assert any("ratings >= 5 became purchases" in n for n in result.notes)
    ev = events_of(tmp_path / "out")
    assert ev.row(0)[:3] == (1, 1193, datetime(2000, 12, 31, 22, 12, 40))
    items = pl.read_parquet(tmp_path / "out" / "items.parquet")
    titles = dict(zip(items[C.RAW_ITEM], items["title"], strict=True))
    assert titles[73] == "Misérables, Les (1995)"
    assert items.filter(pl.col(C.RAW_ITEM) == 661)["category"].item() == "Animation"
    users = pl.read_parquet(tmp_path / "out" / "users.parquet")
    assert users.row(1) == (2, 56, "M", "16")
    toml = (tmp_path / "out" / "gbrank.toml").read_text()
    assert "rating >= 5 -> purchase" in toml


RATINGS_CSV = """\
userId,movieId,rating,timestamp
1,1,4.0,964982703
1,3,4.5,964981247
1,6,3.5,964982224
2,1,0.5,1230768000
2,208800,5.0,1230768100
"""
MOVIES_CSV = """\
movieId,title,genres
1,Toy Story (1995),Adventure|Animation|Children|Comedy|Fantasy
3,Grumpier Old Men (1995),Comedy|Romance
6,"Heat, The Big (1995)",Action|Crime|Thriller
208800,Untitled Film,(no genres listed)
"""


def test_movielens_latest_limit_and_wrong_file(tmp_path: Path) -> None:
    folder = tmp_path / "ml-latest-small"
    write(folder / "ratings.csv", RATINGS_CSV)
    write(folder / "movies.csv", MOVIES_CSV)
    result = run("movielens", folder, tmp_path / "out")
    assert result.per_event_type == {"purchase": 3, "view": 2}
    ev = events_of(tmp_path / "out")
    assert ev.filter(pl.col(C.RAW_ITEM) == 3)["raw_event"].item() == "4.5"
    assert ev.filter(pl.col(C.RAW_ITEM) == 208800)[C.RAW_TS].item() == datetime(
        2009, 1, 1, 0, 1, 40
    )
    items = pl.read_parquet(tmp_path / "out" / "items.parquet")
    heat = items.filter(pl.col(C.RAW_ITEM) == 6).row(0, named=True)
    assert (heat["title"], heat["category"], heat["year"]) == (
        "Heat, The Big (1995)",
        "Action",
        1995,
    )
    untitled = items.filter(pl.col(C.RAW_ITEM) == 208800).row(0, named=True)
    assert (untitled["category"], untitled["genres"], untitled["year"]) == (None, None, None)
    assert any("1 movies have no genre" in n for n in result.notes)

    limited = run("movielens", folder / "ratings.csv", tmp_path / "out2", limit=2)
    assert limited.events == 2 and limited.per_event_type == {"purchase": 2}

    bad = write(tmp_path / "bad" / "ratings.csv", "user,item,score\n1,2,3\n")
    with pytest.raises(DataError, match=r"ratings\.csv.*userId"):
        import_dataset("movielens", bad.parent, tmp_path / "out3")
    with pytest.raises(MissingInputError, match="u.data"):
        import_dataset("movielens", tmp_path / "out", tmp_path / "out4")


def test_cli_import_movielens(tmp_path: Path) -> None:
    folder = tmp_path / "ml"
    write(folder / "ratings.csv", RATINGS_CSV)
    write(folder / "movies.csv", MOVIES_CSV)
    out = tmp_path / "out"
    res = CliRunner().invoke(app, ["data", "import", "movielens", str(folder), "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert "wrote 5 events, 2 users, 4 items" in res.output
    assert "purchase" in res.output and "view" in res.output
    assert (out / "events.parquet").exists() and (out / "gbrank.toml").exists()
    missing = CliRunner().invoke(
        app, ["data", "import", "movielens", str(tmp_path / "nowhere"), "--out", str(out)]
    )
    assert missing.exit_code == 66


def test_suggested_config_lists_only_distinct_targets(tmp_path: Path) -> None:
    from gbrank.config import load_config
    from gbrank.data.importers import import_dataset, suggested_targets

    assert suggested_targets({"view": 5, "purchase": 3}) == ["purchase"]
    assert suggested_targets({"click": 4}) == ["click"]
    assert suggested_targets({"click": 1, "cart": 1, "purchase": 1}) == [
        "click",
        "cart",
        "purchase",
    ]
    src = tmp_path / "ratings.csv"
    src.write_text(
        "userId,movieId,rating,timestamp\n"
        "1,10,4.5,964982703\n"  # purchase
        "1,11,2.0,964982800\n"  # view
        "2,10,5.0,964983000\n"  # purchase
    )
    result = import_dataset("movielens", src, tmp_path / "out")
    cfg = load_config(result.out / "gbrank.toml")
    assert cfg.eval.targets == ["purchase"]  # click and cart would repeat purchase here
