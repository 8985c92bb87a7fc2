"""Listing the domain: queries, files, products, chunks, partitions and fingerprints."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd
import pytest
from sqlalchemy import text

from pipeline.errors import SourceError
from pipeline.jobspec import DomainSpec, Factor
from pipeline.run.domain import Domain, merged_fingerprint

from helpers import customers_frame, write_table


def collect(domain: Domain, **kwargs) -> pd.DataFrame:
    return pd.concat(list(domain.chunks(**kwargs)), ignore_index=True)


def test_query_streams_in_chunks_of_the_given_size(engine):
    write_table(engine, "customers", customers_frame(250))
    domain = Domain(DomainSpec(("customer_id",), (Factor(query="SELECT * FROM customers"),), chunk_size=100), engine)
    sizes = [len(c) for c in domain.chunks()]
    assert sizes == [100, 100, 50] and domain.size == 250


def test_run_date_is_bound_as_a_date(engine):
    frame = pd.DataFrame({"k": [1, 2, 3], "d": ["2026-01-01", "2026-01-02", "2026-01-02"]})
    write_table(engine, "days", frame)
    query = "SELECT k FROM days WHERE d = CAST(:run_date AS VARCHAR(10))"
    domain = Domain(DomainSpec(("k",), (Factor(query=query),)), engine, run_date=dt.date(2026, 1, 2))
    assert collect(domain).k.tolist() == [2, 3]


def test_a_query_on_another_source_database(engine, tmp_path):
    source = f"sqlite:///{tmp_path / 'source.db'}"
    from pipeline.database.engines import make_engine

    other = make_engine(source)
    write_table(other, "customers", customers_frame(20))
    other.dispose()
    domain = Domain(DomainSpec(("customer_id",), (Factor(query="SELECT * FROM customers", source=source),)), engine)
    assert len(collect(domain)) == 20
    domain.close()


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_files(tmp_path, suffix, sqlite_url):
    from pipeline.database.engines import make_engine

    frame = customers_frame(120)
    path = tmp_path / f"customers{suffix}"
    frame.to_csv(path, index=False) if suffix == ".csv" else frame.to_parquet(path, index=False)
    domain = Domain(DomainSpec(("customer_id",), (Factor(file=path),), chunk_size=50), make_engine(sqlite_url))
    chunks = list(domain.chunks())
    assert [len(c) for c in chunks] == [50, 50, 20]
    pd.testing.assert_frame_equal(pd.concat(chunks, ignore_index=True), frame, check_dtype=False)


def test_product_is_generated_chunk_by_chunk(engine):
    write_table(engine, "users", pd.DataFrame({"user_id": range(30), "age": range(30)}))
    write_table(engine, "items", pd.DataFrame({"item_id": range(20), "price": np.linspace(1, 2, 20)}))
    spec = DomainSpec(("user_id", "item_id"), (Factor(query="SELECT * FROM users"),
                                               Factor(query="SELECT * FROM items")), chunk_size=70)
    domain = Domain(spec, engine)
    chunks = list(domain.chunks())
    assert max(len(c) for c in chunks) == 70 and domain.size == 600
    whole = pd.concat(chunks, ignore_index=True)
    assert list(whole.columns) == ["user_id", "age", "item_id", "price"]
    assert len(whole.drop_duplicates(["user_id", "item_id"])) == 600
    assert (whole.age == whole.user_id).all()


@pytest.mark.parametrize("by", [None, ("user_id",)])
def test_partitions_are_disjoint_and_cover_the_domain(engine, by):
    """With ``by`` a PostgreSQL query reads only its partition (hashed in the server); else rows are filtered here."""
    write_table(engine, "users", pd.DataFrame({"user_id": range(101), "age": range(101)}))
    write_table(engine, "items", pd.DataFrame({"item_id": range(7)}))
    spec = DomainSpec(("user_id", "item_id"), (Factor(query="SELECT * FROM users;"),
                                               Factor(query="SELECT * FROM items")), chunk_size=50)
    whole = Domain(spec, engine)
    collect(whole)
    domains = [Domain(spec, engine) for _ in range(4)]
    parts = [collect(d, partition=i, partitions=4, by=by) for i, d in enumerate(domains)]
    keys = [set(zip(p.user_id, p.item_id)) for p in parts]
    assert sum(len(k) for k in keys) == 707 == len(set().union(*keys))
    assert all(len(k) > 0 for k in keys)
    assert sum(d.size for d in domains) == 707
    assert merged_fingerprint([d.digest for d in domains]) == whole.fingerprint
    assert whole.first_columns == ["user_id", "age"]
    with pytest.raises(ValueError):
        next(Domain(spec, engine).chunks(partition=4, partitions=4))


@pytest.mark.postgres
def test_postgresql_reads_only_the_partition_it_is_asked_for(postgresql_url):
    from pipeline.database.dialects import dialect_for
    from pipeline.database.engines import make_engine

    engine = make_engine(postgresql_url)
    query = dialect_for(engine).partition_query("SELECT 1 AS a;", ["a"], 0, 4)
    assert query.startswith("SELECT * FROM (SELECT 1 AS a\n) AS pipeline_domain WHERE ((hashtextextended(COALESCE(")
    write_table(engine, "users", pd.DataFrame({"user_id": range(1000)}))
    spec = DomainSpec(("user_id",), (Factor(query="SELECT * FROM users"),), chunk_size=100)
    domain = Domain(spec, engine)
    part = collect(domain, partition=1, partitions=4, by=("user_id",))
    assert domain._pushed_down and 150 < len(part) < 350
    nulls = pd.DataFrame({"user_id": [1.0, None, 3.0]})  # a NULL key still lands in exactly one partition
    write_table(engine, "users", nulls)
    counts = [sum(map(len, Domain(spec, engine).chunks(i, 4, ("user_id",)))) for i in range(4)]
    assert sum(counts) == 3
    engine.dispose()


def test_one_instant_shares_a_snapshot_until_the_block_ends_where_the_database_can(engine):
    """PostgreSQL exports one, which another Domain reads as of while it lives; SQLite and MariaDB none."""
    write_table(engine, "customers", customers_frame(10))
    spec = DomainSpec(("customer_id",), (Factor(query="SELECT * FROM customers"),))
    domain = Domain(spec, engine)
    shares = engine.dialect.name == "postgresql"
    with domain.one_instant():  # one statement reads one instant anyway
        assert domain.snapshots == {}
    with pytest.raises(KeyboardInterrupt), domain.one_instant(partitioned=True):
        exported = domain.snapshots.get(None)
        assert (exported is not None) == shares
        with engine.begin() as conn:
            conn.execute(text("DELETE FROM customers WHERE customer_id > 4"))
        assert len(collect(Domain(spec, engine, snapshots=domain.snapshots))) == (10 if shares else 4)
        raise KeyboardInterrupt  # a load that fails ends the exporting transaction too
    assert domain.snapshots == {}
    if shares:
        with pytest.raises(SourceError, match="invalid snapshot identifier"):
            collect(Domain(spec, engine, snapshots={None: exported}))


def test_fingerprint_ignores_order_and_sees_changes(engine):
    frame = customers_frame(60)
    spec = DomainSpec(("customer_id",), (Factor(query="SELECT * FROM customers"),), chunk_size=25)

    def fingerprint(data: pd.DataFrame) -> str:
        write_table(engine, "customers", data)
        domain = Domain(spec, engine)
        collect(domain)
        return domain.fingerprint

    base = fingerprint(frame)
    assert fingerprint(frame.iloc[::-1]) == base
    changed = frame.copy()
    changed.loc[5, "x1"] += 1
    assert fingerprint(changed) != base


@pytest.mark.parametrize("query, message", [
    ("SELECT customer_id AS id, x1 FROM customers", r"domain key\(s\) customer_id not among the domain's columns: id, x1"),
    ("SELECT nope FROM customers", "domain query failed"),
])
def test_source_errors(engine, query, message):
    write_table(engine, "customers", customers_frame(5))
    domain = Domain(DomainSpec(("customer_id",), (Factor(query=query),)), engine)
    with pytest.raises(SourceError, match=message):
        collect(domain)


def test_factor_columns_must_not_collide(engine):
    write_table(engine, "a", pd.DataFrame({"k": [1], "v": [1.0]}))
    write_table(engine, "b", pd.DataFrame({"j": [1], "v": [1.0]}))
    spec = DomainSpec(("k", "j"), (Factor(query="SELECT * FROM a"), Factor(query="SELECT * FROM b")))
    with pytest.raises(SourceError, match="'v' comes from more than one factor"):
        collect(Domain(spec, engine))
