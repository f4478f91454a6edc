"""Importers for Online Retail, DIGINETICA, YOOCHOOSE and Instacart, on small fixtures.

Each fixture is written in the dataset's published format and built so that the expected
output is known row by row; every test ends with the data contract check (the output loads
with ``load_events`` and the suggested config with ``load_config``).
"""

from __future__ import annotations

import sys
from datetime import datetime
from pathlib import Path

import polars as pl
import pytest

from gbrank import columns as C
from gbrank.config import DataConfig, load_config
from gbrank.data.importers import ImportOptions, ImportResult, import_dataset, reader
from gbrank.data.io import load_events, load_table
from gbrank.errors import ConfigError, DataError, MissingInputError


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text.lstrip("\n"))
    return path


def events_of(result: ImportResult) -> pl.DataFrame:
    return pl.read_parquet(result.out / "events.parquet")


def check_contract(result: ImportResult) -> None:
    """The output follows the data contract and the suggested config loads."""
    out = result.out
    loaded = load_events(DataConfig(events=str(out / "events.parquet")))
    assert loaded.summary.rows == result.events
    assert loaded.summary.per_event_type == result.per_event_type
    cfg = load_config(out / "gbrank.toml")
    assert cfg.folds.horizon_days == result.horizon_days
    assert Path(cfg.data.events) == (out / "events.parquet").resolve()
    if (out / "items.parquet").exists():
        assert Path(cfg.data.items) == (out / "items.parquet").resolve()
        attrs = load_table(cfg.data.items, C.RAW_ITEM, "items", loaded.items)
        assert attrs.height > 0


def row(events: pl.DataFrame, **where: object) -> dict[str, object]:
    hits = events.filter(*[pl.col(k) == v for k, v in where.items()])
    assert hits.height == 1, hits
    return hits.row(0, named=True)


def note_with(result: ImportResult, *words: str) -> str:
    hits = [n for n in result.notes if all(w in n for w in words)]
    assert hits, (words, result.notes)
    return hits[0]


# --------------------------------------------------------------------------- Online Retail

# UCI Online Retail CSV. 12 lines: 6 kept, 2 cancellations, 2 with quantity or price <= 0,
# 2 without a customer.
RETAIL_CSV = """
InvoiceNo,StockCode,Description,Quantity,InvoiceDate,UnitPrice,CustomerID,Country
536365,85123A,WHITE HANGING HEART T-LIGHT HOLDER,6,12/1/2010 8:26,2.55,17850,United Kingdom
536365,71053,WHITE METAL LANTERN,6,12/1/2010 8:26,3.39,17850,United Kingdom
536366,22633,HAND WARMER UNION JACK,6,12/1/2010 8:28,1.85,17850,United Kingdom
536367,85123A,WHITE HANGING HEART T-LIGHT HOLDER,32,12/1/2010 8:34,2.95,13047,United Kingdom
536368,85123A,CREAM HANGING HEART T-LIGHT HOLDER,4,12/1/2010 8:34,2.65,12583,France
C536379,D,Discount,-1,12/1/2010 9:41,27.5,14527,United Kingdom
C536383,35004C,SET OF 3 COLOURED FLYING DUCKS,-1,12/1/2010 9:49,4.65,15311,United Kingdom
536414,22139,,56,12/1/2010 11:52,0,,United Kingdom
536544,21773,DECORATIVE ROSE BATHROOM BOTTLE,1,12/1/2010 14:32,2.51,,United Kingdom
536544,21774,DECORATIVE CATS BATHROOM BOTTLE,2,12/1/2010 14:32,2.51,,United Kingdom
536589,21777,RECIPE BOX WITH METAL HEART,-10,12/1/2010 16:50,1.0,16000,United Kingdom
537000,POST,POSTAGE,3,12/13/2010 15:05,18,12583,France
"""


def test_online_retail_csv(tmp_path: Path) -> None:
    src = write(tmp_path / "Online Retail.csv", RETAIL_CSV)
    result = import_dataset("online-retail", src, tmp_path / "out")
    assert result.per_event_type == {"purchase": 6}
    assert result.users == 3 and result.items == 4
    events = events_of(result)
    assert events.schema[C.RAW_USER] == pl.Int64
    assert events.schema[C.RAW_ITEM] == pl.String
    assert events.schema[C.RAW_TS] == pl.Datetime("ms")
    line = row(events, session_id=536367)
    assert line[C.RAW_USER] == 13047 and line[C.RAW_ITEM] == "85123A"
    assert line[C.RAW_TS] == datetime(2010, 12, 1, 8, 34)
    assert line[C.RAW_VALUE] == pytest.approx(32 * 2.95) and line[C.RAW_QUANTITY] == 32.0
    assert line["raw_event"] == "invoice_line"
    assert row(events, item_id="POST")[C.RAW_TS] == datetime(2010, 12, 13, 15, 5)
    # dropped lines never reach the events
    assert not events.filter(
        pl.col(C.RAW_ITEM).is_in(["D", "35004C", "22139", "21773", "21777"])
    ).height
    assert note_with(result, "2 of 12", "cancellations")
    assert note_with(result, "2 further lines", "quantity <= 0")
    assert note_with(result, "2 further lines", "without a customer")
    assert note_with(result, "1 kept lines", "without a digit")

    items = pl.read_parquet(tmp_path / "out" / "items.parquet")
    heart = row(items, item_id="85123A")
    assert heart["description"] == "WHITE HANGING HEART T-LIGHT HOLDER"  # 2 of its 3 lines
    assert heart["price"] == pytest.approx(2.65)  # median of 2.55, 2.95, 2.65
    users = pl.read_parquet(tmp_path / "out" / "users.parquet")
    assert dict(users.iter_rows()) == {
        12583: "France",
        13047: "United Kingdom",
        17850: "United Kingdom",
    }
    assert result.horizon_days == 3  # 12.3 days of data: a quarter of the span
    check_contract(result)


def test_online_retail_folder_latin1_and_limit(tmp_path: Path) -> None:
    # the UCI export has Latin-1 bytes in a few descriptions
    text = RETAIL_CSV.lstrip("\n").replace("WHITE METAL LANTERN", "METAL LANTERN CAF\xc9")
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "Online Retail.csv").write_bytes(text.encode("latin-1"))
    full = import_dataset("online-retail", tmp_path / "data", tmp_path / "full")
    assert full.per_event_type == {"purchase": 6}
    items = pl.read_parquet(tmp_path / "full" / "items.parquet")
    assert row(items, item_id="71053")["description"].startswith("METAL LANTERN CAF")
    result = import_dataset(
        "online-retail", tmp_path / "data", tmp_path / "out", ImportOptions(limit=2)
    )
    assert result.events == 2
    assert note_with(result, "limit", "first 2 of 6")
    check_contract(result)


def write_retail_ii_xlsx(path: Path) -> Path:
    """Online Retail II workbook: two yearly sheets, real Excel datetimes, float customer ids."""
    import xlsxwriter

    # 2009-2010: 2 kept, 1 cancellation, 1 with a negative quantity and price 0
    first = pl.DataFrame(
        {
            "Invoice": ["489434", "489434", "C489449", "489464"],
            "StockCode": ["85048", "79323P", "22087", "21733"],
            "Description": [
                "15CM CHRISTMAS GLASS BALL 20 LIGHTS",
                "PINK CHERRY LIGHTS",
                "PAPER BUNTING WHITE LACE",
                "RED HANGING HEART T-LIGHT HOLDER",
            ],
            "Quantity": [12, 12, -12, -96],
            "InvoiceDate": [
                datetime(2009, 12, 1, 7, 45),
                datetime(2009, 12, 1, 7, 45),
                datetime(2009, 12, 1, 10, 33),
                datetime(2009, 12, 1, 10, 52),
            ],
            "Price": [6.95, 6.75, 2.95, 0.0],
            "Customer ID": [13085.0, 13085.0, 16321.0, None],
            "Country": ["United Kingdom", "United Kingdom", "Australia", "United Kingdom"],
        }
    )
    # 2010-2011: invoice numbers stored as numbers; 1 kept, 1 without a customer
    second = pl.DataFrame(
        {
            "Invoice": [536365, 536366],
            "StockCode": ["85123A", "22633"],
            "Description": ["WHITE HANGING HEART T-LIGHT HOLDER", "HAND WARMER UNION JACK"],
            "Quantity": [6, 6],
            "InvoiceDate": [datetime(2010, 12, 1, 8, 26), datetime(2010, 12, 1, 8, 28)],
            "Price": [2.55, 1.85],
            "Customer ID": [17850.0, None],
            "Country": ["United Kingdom", "United Kingdom"],
        }
    )
    with xlsxwriter.Workbook(path) as workbook:
        first.write_excel(workbook, worksheet="Year 2009-2010")
        second.write_excel(workbook, worksheet="Year 2010-2011")
    return path


def test_online_retail_ii_xlsx_two_sheets(tmp_path: Path) -> None:
    pytest.importorskip("fastexcel")
    pytest.importorskip("xlsxwriter")
    src = write_retail_ii_xlsx(tmp_path / "online_retail_II.xlsx")
    result = import_dataset("online-retail", tmp_path, tmp_path / "out")  # folder: finds it
    assert result.per_event_type == {"purchase": 3}
    events = events_of(result)
    line = row(events, item_id="79323P")
    assert line[C.RAW_USER] == 13085 and line[C.RAW_SESSION] == 489434
    assert line[C.RAW_TS] == datetime(2009, 12, 1, 7, 45)
    assert line[C.RAW_VALUE] == pytest.approx(12 * 6.75)
    assert row(events, item_id="85123A")[C.RAW_SESSION] == 536365  # numeric cell
    assert note_with(result, "2 sheets", "Year 2009-2010", "Year 2010-2011")
    assert note_with(result, "1 of 6", "cancellations")
    assert note_with(result, "1 further lines", "quantity <= 0")
    assert note_with(result, "1 further lines", "without a customer")
    assert reader("online-retail")(tmp_path, ImportOptions()).source_files == [str(src)]
    check_contract(result)


def test_online_retail_xlsx_without_fastexcel(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    src = tmp_path / "online_retail_II.xlsx"
    src.write_bytes(b"PK")  # never opened: the missing reader is reported first
    monkeypatch.setitem(sys.modules, "fastexcel", None)  # makes `import fastexcel` fail
    with pytest.raises(ConfigError) as err:
        import_dataset("online-retail", src, tmp_path / "out")
    assert 'pip install "gbrank[excel]"' in str(err.value).splitlines()


def test_online_retail_wrong_columns(tmp_path: Path) -> None:
    src = write(tmp_path / "orders.csv", "order_id,product_id,qty\n1,2,3\n")
    with pytest.raises(DataError) as err:
        import_dataset("online-retail", src, tmp_path / "out")
    assert str(src) in str(err.value) and "InvoiceNo or Invoice" in str(err.value)


def test_online_retail_bad_date(tmp_path: Path) -> None:
    text = RETAIL_CSV.replace("12/13/2010 15:05", "13th Dec")
    src = write(tmp_path / "Online Retail.csv", text)
    with pytest.raises(DataError) as err:
        import_dataset("online-retail", src, tmp_path / "out")
    assert "InvoiceDate" in str(err.value) and "13th Dec" in str(err.value)


# --------------------------------------------------------------------------- DIGINETICA

# Sessions: 1 anonymous; 2 and 3 of user 5; 4 has no userId in its views but user 7 on its
# purchase, so the whole session belongs to u7.
DIGI_VIEWS = """
sessionId;userId;itemId;timeframe;eventdate
1;;81766;526309;2016-05-09
1;;31331;1031018;2016-05-09
1;;32118;243569;2016-05-09
2;5;9654;75848;2016-05-10
2;5;33043;1070811;2016-05-10
3;5;1000;1000;2016-05-12
4;;9654;0;2016-05-13
"""
DIGI_PURCHASES = """
sessionId;userId;timeframe;eventdate;ordernumber;itemId
2;5;1100000;2016-05-10;100;33043
4;7;5000;2016-05-13;101;9654
1;;1200000;2016-05-09;102;81766
"""


def write_diginetica(folder: Path, attributes: bool = True) -> Path:
    write(folder / "train-item-views.csv", DIGI_VIEWS)
    write(folder / "train-purchases.csv", DIGI_PURCHASES)
    if attributes:
        write(folder / "product-categories.csv", "itemId;categoryId\n81766;1191\n9654;5\n")
        write(
            folder / "products.csv",
            "itemId;pricelog2;product.name.tokens\n81766;10;4875,12\n9654;3;1,2,3\n31331;0;7\n",
        )
    return folder


def test_diginetica(tmp_path: Path) -> None:
    src = write_diginetica(tmp_path / "digi")
    result = import_dataset("diginetica", src, tmp_path / "out")
    assert result.per_event_type == {"view": 7, "purchase": 3}
    events = events_of(result)
    assert events.schema[C.RAW_USER] == pl.String and events.schema[C.RAW_ITEM] == pl.Int64
    view = row(events, item_id=31331)
    assert view[C.RAW_USER] == "s1" and view[C.RAW_SESSION] == 1
    assert view[C.RAW_TS] == datetime(2016, 5, 9, 0, 17, 11, 18000)  # + 1,031,018 ms
    assert view["raw_event"] == "item_view"
    assert set(events.filter(pl.col(C.RAW_SESSION).is_in([2, 3]))[C.RAW_USER]) == {"u5"}
    assert set(events.filter(pl.col(C.RAW_SESSION) == 4)[C.RAW_USER]) == {"u7"}
    bought = row(events, event="purchase", session_id=2)
    assert bought[C.RAW_ITEM] == 33043 and bought[C.RAW_TS] == datetime(2016, 5, 10, 0, 18, 20)
    assert note_with(result, "4 sessions, 1 of them anonymous")

    items = pl.read_parquet(tmp_path / "out" / "items.parquet")
    assert row(items, item_id=81766)["category"] == 1191
    assert row(items, item_id=81766)["price"] == pytest.approx(1024.0)
    assert row(items, item_id=9654)["price"] == pytest.approx(8.0)
    assert row(items, item_id=31331)["category"] is None  # price only
    assert result.horizon_days == 1  # 4 days of data
    check_contract(result)


def test_diginetica_limit_and_no_attributes(tmp_path: Path) -> None:
    src = write_diginetica(tmp_path / "digi", attributes=False)
    # the first 6 views cover sessions 1, 2 and 3; with their purchases, only session 1
    # (3 views + 1 purchase) fits whole into 6 events
    result = import_dataset("diginetica", src, tmp_path / "out", ImportOptions(limit=6))
    assert result.per_event_type == {"view": 3, "purchase": 1}
    assert set(events_of(result)[C.RAW_SESSION]) == {1}
    assert not (tmp_path / "out" / "items.parquet").exists()
    check_contract(result)


def test_diginetica_wrong_columns_and_missing_files(tmp_path: Path) -> None:
    folder = tmp_path / "digi"
    write(folder / "train-item-views.csv", DIGI_VIEWS.replace(";", ","))  # wrong separator
    with pytest.raises(DataError) as err:
        import_dataset("diginetica", folder, tmp_path / "out")
    assert "train-item-views.csv" in str(err.value)
    (tmp_path / "empty").mkdir()
    with pytest.raises(MissingInputError, match="train-item-views.csv"):
        import_dataset("diginetica", tmp_path / "empty", tmp_path / "out")
    with pytest.raises(MissingInputError):
        import_dataset("diginetica", tmp_path / "missing", tmp_path / "out")


# --------------------------------------------------------------------------- YOOCHOOSE

# Categories: 214536502 is seen as unknown (0) once and as a brand twice; 214662742 as 0 and
# as a special offer; 214774687 as category 3; 214832672 as 3 once and 5 twice; the others
# only as 0 (no category).
YC_CLICKS = """
1,2014-04-07T10:51:09.277Z,214536502,0
1,2014-04-07T10:54:09.868Z,214536500,0
1,2014-04-07T10:54:46.998Z,214536506,0
2,2014-04-07T13:56:37.614Z,214662742,0
2,2014-04-07T13:57:19.373Z,214662742,S
3,2014-04-02T13:17:46.940Z,214716935,0
3,2014-04-02T13:26:02.515Z,214774687,3
3,2014-04-02T13:30:12.318Z,214832672,3
3,2014-04-02T13:31:12.318Z,214832672,5
5,2014-04-03T09:00:00.000Z,214832672,5
4,2014-04-06T16:58:20.848Z,214536502,2053105432
4,2014-04-06T16:58:30Z,214536502,2053105432
"""
# value known only for sessions 2 and 4; session 3 bought one item with price 0 and quantity
# 0 (both unknown) and one with quantity 0.
YC_BUYS = """
2,2014-04-07T14:01:27.000Z,214662742,1046,2
3,2014-04-02T13:40:00.000Z,214774687,0,0
3,2014-04-02T13:40:00.000Z,214832672,1046,0
4,2014-04-06T17:00:00.000Z,214536502,3246,1
"""


def test_yoochoose_challenge_files(tmp_path: Path) -> None:
    folder = tmp_path / "yc"
    write(folder / "yoochoose-clicks.dat", YC_CLICKS)
    write(folder / "yoochoose-buys.dat", YC_BUYS)
    result = import_dataset("yoochoose", folder, tmp_path / "out")
    assert result.per_event_type == {"click": 12, "purchase": 4}
    events = events_of(result)
    assert events.schema[C.RAW_USER] == pl.Int64 and events.schema[C.RAW_ITEM] == pl.Int64
    assert (events[C.RAW_USER] == events[C.RAW_SESSION]).all()  # sessions are the users
    first = row(events, session_id=1, item_id=214536502)
    assert first[C.RAW_TS] == datetime(2014, 4, 7, 10, 51, 9, 277000) and first["event"] == "click"
    assert row(events, session_id=4, event="click", ts=datetime(2014, 4, 6, 16, 58, 30))
    buy = row(events, session_id=2, event="purchase")
    assert buy[C.RAW_VALUE] == 2092.0 and buy[C.RAW_QUANTITY] == 2.0 and buy["raw_event"] == "buy"
    unknown = events.filter(pl.col(C.RAW_SESSION) == 3, pl.col(C.RAW_EVENT) == "purchase")
    assert unknown.height == 2 and unknown[C.RAW_VALUE].null_count() == 2
    assert unknown[C.RAW_QUANTITY].null_count() == 2
    assert note_with(result, "4 buys", "1 buys with price 0", "2 with quantity 0")

    items = pl.read_parquet(tmp_path / "out" / "items.parquet")
    assert items.schema["category"] == pl.String
    assert dict(items.select(C.RAW_ITEM, "category").iter_rows()) == {
        214536502: "2053105432",
        214662742: "S",
        214774687: "3",
        214832672: "5",
    }
    kinds = dict(items.select(C.RAW_ITEM, "category_kind").iter_rows())
    assert kinds[214536502] == "brand" and kinds[214662742] == "special_offer"
    assert kinds[214774687] == "category"
    assert note_with(result, "4 of 7 clicked items")
    check_contract(result)


def test_yoochoose_limit_and_bad_file(tmp_path: Path) -> None:
    folder = tmp_path / "yc"
    write(folder / "yoochoose-clicks.dat", YC_CLICKS)
    write(folder / "yoochoose-buys.dat", YC_BUYS)
    # the first 8 clicks cover sessions 1, 2 and part of 3; with their buys, sessions 1 (3
    # clicks) and 2 (2 clicks + 1 buy) fit whole into 8 events, session 3 (3 + 2) does not
    result = import_dataset("yoochoose", folder, tmp_path / "out", ImportOptions(limit=8))
    assert result.per_event_type == {"click": 5, "purchase": 1}
    assert set(events_of(result)[C.RAW_SESSION]) == {1, 2}
    check_contract(result)
    bad = write(tmp_path / "bad" / "yoochoose-clicks.dat", "SessionID,Timestamp,ItemID\n1,x,2\n")
    with pytest.raises(DataError) as err:
        import_dataset("yoochoose", bad.parent, tmp_path / "out2")
    assert str(bad) in str(err.value)


PREPARED_TRAIN = """
SessionId\tItemId\tTime
1\t214536502\t1396860669.277
1\t214536506\t1396860886.998
3\t214716935\t1396437466.94
"""
PREPARED_TEST = """
SessionId\tItemId\tTime
9\t214662742\t1396871797.614
"""


def test_yoochoose_prepared_files(tmp_path: Path) -> None:
    folder = tmp_path / "yc100k"
    write(folder / "yc_train_full.txt", PREPARED_TRAIN)
    write(folder / "yc_test.txt", PREPARED_TEST)
    write(folder / "yc_train_tr.txt", PREPARED_TRAIN)  # a subset of train_full: not read
    result = import_dataset("yoochoose", folder, tmp_path / "out")
    assert result.per_event_type == {"click": 4}
    events = events_of(result)
    click = row(events, item_id=214536502)
    assert click[C.RAW_USER] == 1 and click[C.RAW_SESSION] == 1
    assert click[C.RAW_TS] == datetime(2014, 4, 7, 8, 51, 9, 277000)
    assert row(events, item_id=214716935)[C.RAW_TS] == datetime(2014, 4, 2, 11, 17, 46, 940000)
    assert note_with(result, "yc_train_full.txt (3 clicks)", "yc_test.txt (1 clicks)")
    assert len(reader("yoochoose")(folder, ImportOptions()).source_files) == 2
    check_contract(result)

    limited = import_dataset("yoochoose", folder, tmp_path / "out2", ImportOptions(limit=2))
    assert limited.per_event_type == {"click": 2}  # session 1 whole
    single = import_dataset("yoochoose", folder / "yc_test.txt", tmp_path / "out1")
    assert single.per_event_type == {"click": 1}
    check_contract(single)


def test_yoochoose_prepared_wrong_columns_and_missing(tmp_path: Path) -> None:
    src = write(tmp_path / "x_test.txt", "Session\tItem\tTs\n1\t2\t1396860669\n")
    with pytest.raises(DataError) as err:
        import_dataset("yoochoose", src, tmp_path / "out")
    assert str(src) in str(err.value) and "SessionId" in str(err.value)
    (tmp_path / "empty").mkdir()
    with pytest.raises(MissingInputError, match="yoochoose-clicks.dat"):
        import_dataset("yoochoose", tmp_path / "empty", tmp_path / "out")


# --------------------------------------------------------------------------- Instacart

# User 1: orders 10 (day 0, 8h), 11 (+15 days, 7h), 12 (train, +21 days, 12h).
# User 2: orders 13 (day 0, 9h), 15 (+3 days, 18h), 14 (test: no products). The rows are
# not in order_number order on purpose.
IC_ORDERS = """
order_id,user_id,eval_set,order_number,order_dow,order_hour_of_day,days_since_prior_order
11,1,prior,2,3,7,15.0
10,1,prior,1,2,8,
12,1,train,3,4,12,21.0
15,2,prior,2,1,18,3.0
13,2,prior,1,1,9,
14,2,test,3,5,10,7.0
"""
IC_PRIOR = """
order_id,product_id,add_to_cart_order,reordered
10,196,1,0
10,14084,2,0
11,196,1,1
11,12427,2,0
13,500,1,0
15,500,1,1
15,600,2,0
99,700,1,0
"""
IC_TRAIN = """
order_id,product_id,add_to_cart_order,reordered
12,196,1,1
12,12427,2,1
"""
IC_PRODUCTS = """
product_id,product_name,aisle_id,department_id
196,"Soda, Original",77,7
14084,Organic Milk,84,16
12427,Chips,23,19
500,Bananas,24,4
600,Apples,24,4
700,Unused,1,1
"""


def write_instacart(folder: Path) -> Path:
    write(folder / "orders.csv", IC_ORDERS)
    write(folder / "order_products__prior.csv", IC_PRIOR)
    write(folder / "order_products__train.csv", IC_TRAIN)
    write(folder / "products.csv", IC_PRODUCTS)
    write(folder / "aisles.csv", "aisle_id,aisle\n77,soft drinks\n24,fresh fruits\n")
    write(folder / "departments.csv", "department_id,department\n7,beverages\n4,produce\n")
    return folder


def test_instacart_folder(tmp_path: Path) -> None:
    src = write_instacart(tmp_path / "ic")
    result = import_dataset("instacart", src, tmp_path / "out")
    assert result.per_event_type == {"purchase": 9}  # 8 prior lines - 1 orphan + 2 train
    events = events_of(result)
    assert events.schema[C.RAW_USER] == pl.Int64 and events.schema[C.RAW_ITEM] == pl.Int64
    assert row(events, session_id=10, item_id=14084)[C.RAW_TS] == datetime(2017, 1, 1, 8, 0, 2)
    assert row(events, session_id=11, item_id=12427)[C.RAW_TS] == datetime(2017, 1, 16, 7, 0, 2)
    train = row(events, session_id=12, item_id=196)
    assert train[C.RAW_TS] == datetime(2017, 2, 6, 12, 0, 1) and train["raw_event"] == "reorder"
    assert row(events, session_id=15, item_id=600)[C.RAW_TS] == datetime(2017, 1, 4, 18, 0, 2)
    assert row(events, session_id=13, item_id=500)[C.RAW_TS] == datetime(2017, 1, 1, 9, 0, 1)
    assert events.filter(pl.col("raw_event") == "reorder").height == 4
    assert not events.filter(pl.col(C.RAW_ITEM) == 700).height
    assert note_with(result, "1 order lines", "dropped")
    assert note_with(result, "1 test orders")
    assert note_with(result, "aligned at their first order")

    items = pl.read_parquet(tmp_path / "out" / "items.parquet")
    soda = row(items, item_id=196)
    assert soda["category"] == 77 and soda["department"] == 7
    assert soda["product_name"] == "Soda, Original"
    assert soda["aisle_name"] == "soft drinks" and soda["department_name"] == "beverages"
    assert row(items, item_id=14084)["aisle_name"] is None
    assert result.horizon_days == 9  # 36 days of data: a quarter
    check_contract(result)


def test_instacart_limit_and_one_published_file(tmp_path: Path) -> None:
    src = write_instacart(tmp_path / "ic")
    result = import_dataset(
        "instacart", src / "orders.csv", tmp_path / "out", ImportOptions(limit=3)
    )
    assert result.events == 3
    assert note_with(result, "limit", "first 3")
    check_contract(result)


# The flat sample layout: an unnamed index column, floats for the per-line numbers.
IC_FLAT = """
,order_id,user_id,order_number,order_dow,order_hour_of_day,days_since_prior_order,product_id,add_to_cart_order,reordered
0,2539329,1,1,2,8,,196,1.0,0.0
1,2539329,1,1,2,8,,14084,2.0,0.0
2,2398795,1,2,3,7,15.0,196,1.0,1.0
3,2398795,1,2,3,7,15.0,10258,2.0,0.0
4,473747,1,3,3,12,21.0,196,1.0,1.0
5,2254736,2,1,4,7,,26088,1.0,0.0
"""


def test_instacart_flat_sample(tmp_path: Path) -> None:
    src = write(tmp_path / "instacart_df_sample.csv", IC_FLAT)
    result = import_dataset("instacart", src, tmp_path / "out")
    assert result.per_event_type == {"purchase": 6}
    assert result.users == 2 and result.items == 4
    events = events_of(result)
    last = row(events, session_id=473747)
    assert last[C.RAW_USER] == 1 and last[C.RAW_ITEM] == 196
    assert last[C.RAW_TS] == datetime(2017, 2, 6, 12, 0, 1)
    assert row(events, session_id=2398795, item_id=10258)[C.RAW_TS] == datetime(
        2017, 1, 16, 7, 0, 2
    )
    assert row(events, session_id=2254736)[C.RAW_TS] == datetime(2017, 1, 1, 7, 0, 1)
    assert not (tmp_path / "out" / "items.parquet").exists()
    check_contract(result)


def test_instacart_errors(tmp_path: Path) -> None:
    lines = write(tmp_path / "lines.csv", IC_PRIOR)  # order lines alone: no user_id
    with pytest.raises(DataError) as err:
        import_dataset("instacart", lines, tmp_path / "out")
    assert str(lines) in str(err.value) and "orders.csv" in str(err.value)
    wrong = write(tmp_path / "wrong.csv", "a,b\n1,2\n")
    with pytest.raises(DataError) as err:
        import_dataset("instacart", wrong, tmp_path / "out")
    assert str(wrong) in str(err.value)
    (tmp_path / "empty").mkdir()
    with pytest.raises(MissingInputError, match="orders.csv"):
        import_dataset("instacart", tmp_path / "empty", tmp_path / "out")
    with pytest.raises(MissingInputError):
        import_dataset("instacart", tmp_path / "nowhere", tmp_path / "out")
