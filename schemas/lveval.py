"""LV-Eval level splits: one row per (QA item, level, depth) in LV-Eval's record shape plus provenance."""

import pandera.polars as pa
import polars as pl

LENGTH_TOLERANCE = 0.02  # a record's length may differ from its level by this share (replacements shift it)


class LevelSchema(pa.DataFrameModel):
    id: str = pa.Field(unique=True)
    input: str = pa.Field(str_length={"min_value": 1})
    answers: pl.List(pl.String)
    length: pl.Int64 = pa.Field(gt=0)  # input + context + answers, as LV-Eval counts it
    context_length: pl.Int64 = pa.Field(gt=0)
    language: str = pa.Field(isin=["en", "zh"])
    level_length: pl.Int64 = pa.Field(gt=0)
    depth: pl.List(pl.Float64)
    confusing_facts: pl.List(pl.String)

    @pa.check("answers", name="at_least_one_answer")
    def has_answer(cls, data: pa.PolarsData) -> pl.LazyFrame:
        return data.lazyframe.select(pl.col(data.key).list.len() > 0)

    @pa.check("depth", name="depth_in_0_1")
    def depth_fraction(cls, data: pa.PolarsData) -> pl.LazyFrame:
        col = pl.col(data.key)
        return data.lazyframe.select((col.list.min() >= 0.0) & (col.list.max() <= 1.0))

    @pa.dataframe_check(name="length_within_2pct_of_level")
    def on_level(cls, data: pa.PolarsData) -> pl.LazyFrame:
        off = (pl.col("length") - pl.col("level_length")).abs()
        return data.lazyframe.select(off <= pl.col("level_length") * LENGTH_TOLERANCE)

    @pa.dataframe_check(name="context_shorter_than_the_record")
    def context_within(cls, data: pa.PolarsData) -> pl.LazyFrame:
        return data.lazyframe.select(pl.col("context_length") < pl.col("length"))

    class Config:
        strict = False
