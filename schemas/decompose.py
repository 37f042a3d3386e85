"""Dataset Decomposition splits: bucket pieces, the per-document account, the concat-and-chunk baseline.

Token lists are not copied into the check (`Split.unchecked`); their length is fixed by construction (every
piece of bucket k is 2^k (+1) tokens, asserted while decomposing)."""

import pandera.polars as pa
import polars as pl


class PiecesSchema(pa.DataFrameModel):
    doc_id: pl.Int64 = pa.Field(ge=0)
    offset: pl.Int64 = pa.Field(ge=0)

    class Config:
        strict = False


class DocumentsSchema(pa.DataFrameModel):
    doc_id: pl.Int64 = pa.Field(ge=0, unique=True)
    tokens: pl.Int64 = pa.Field(ge=0)
    kept: pl.Int64 = pa.Field(ge=0)
    dropped: pl.Int64 = pa.Field(ge=0)
    pieces: pl.Int32 = pa.Field(ge=0)

    @pa.dataframe_check(name="kept_plus_dropped_is_tokens")
    def accounted(cls, data: pa.PolarsData) -> pl.LazyFrame:
        return data.lazyframe.select(pl.col("kept") + pl.col("dropped") == pl.col("tokens"))

    class Config:
        strict = False


class BaselineSchema(pa.DataFrameModel):
    seq_id: pl.Int64 = pa.Field(ge=0)
    documents: pl.Int32 = pa.Field(ge=1)

    class Config:
        strict = False
