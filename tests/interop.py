"""Reads a tars-index dataset with pyarrow, DuckDB and Polars, exactly as a user would, and prints what each saw.

Usage: python tests/interop.py DATASET_DIR   (run by tests/cli.rs; needs pyarrow, duckdb and polars)
"""
import glob
import json
import os
import sys

import duckdb
import polars as pl
import pyarrow.parquet as pq

dataset = sys.argv[1]
files = sorted(glob.glob(os.path.join(dataset, "data", "*.parquet")))
table = pq.read_table(files)
meta = pq.read_metadata(files[0]).metadata or {}  # the file's key-value metadata
schema_meta = table.schema.metadata or {}  # the Arrow schema's, as pyarrow and Polars users see it
emb_type = table.schema.field("embedding").type
first = table.slice(0, 1).to_pylist()[0]

con = duckdb.connect()
pattern = os.path.join(dataset, "data", "*.parquet")
duck_rows, duck_min_len, duck_max_len = con.execute(
    f"SELECT count(*), min(len(embedding)), max(len(embedding)) FROM read_parquet('{pattern}')"
).fetchone()
# The live rows (the README's query): rows of deleted or older versions of documents stay in the data files until
# they are compacted away; the documents table lists the live ones.
docs = os.path.join(dataset, "docs", "*.parquet")
duck_live = con.execute(
    f"SELECT count(*) FROM read_parquet('{pattern}') WHERE row_id IN (SELECT unnest(rows) FROM read_parquet('{docs}'))"
).fetchone()[0]
duck_first = con.execute(f"SELECT id, embedding[1] FROM read_parquet('{pattern}') WHERE id = ?", [first["id"]]).fetchone()

# The documents table: built-in and metadata columns, typed; joined to the live chunks by row id.
docs_table = pq.read_table(glob.glob(docs)[0])
docs_types = {f.name: str(f.type) for f in docs_table.schema}
joined = con.execute(
    f"""SELECT d.doc, d.year, d.venue, strftime(d.published, '%Y-%m-%d'), c.text
        FROM read_parquet('{pattern}') c
        JOIN (SELECT *, unnest(rows) AS row_id FROM read_parquet('{docs}')) d USING (row_id)
        WHERE d.year = 2019"""
).fetchone()
null_venue = pl.read_parquet(docs).filter(pl.col("format") == "csv").filter(pl.col("venue").is_null())["doc"].to_list()

frame = pl.read_parquet(pattern)
polars_first = frame.filter(pl.col("id") == first["id"]).row(0, named=True)

print(json.dumps({
    "pyarrow": {
        "rows": table.num_rows,
        "columns": table.schema.names,
        "embedding_type": str(emb_type),
        "list_size": emb_type.list_size,
        "model": meta.get(b"tars_index.model", b"").decode(),
        "dimensions": meta.get(b"tars_index.dimensions", b"").decode(),
        "schema_model": schema_meta.get(b"tars_index.model", b"").decode(),
        "first_id": first["id"],
        "first_value": first["embedding"][0],
    },
    "docs": {"pyarrow_types": docs_types, "duckdb_join": list(joined), "polars_null_venue": null_venue},
    "duckdb": {"rows": duck_rows, "live_rows": duck_live, "min_len": duck_min_len, "max_len": duck_max_len, "first_value": duck_first[1]},
    "polars": {
        "rows": frame.height,
        "embedding_dtype": str(frame.schema["embedding"]),
        "first_value": list(polars_first["embedding"])[0],
    },
}))
