"""Ruler's MLT-tagged training rows and its TLG evaluation instructions."""

import pandera.polars as pa
import polars as pl

TAGS = ["[MLT:10]", "[MLT:30]", "[MLT:50]", "[MLT:80]", "[MLT:150]", "[MLT:300]", "[MLT:500]", "[MLT:700]",
        "[MLT:>800]"]


class TaggedSchema(pa.DataFrameModel):
    id: str = pa.Field(unique=True)
    messages: pl.List(pl.Struct({"role": pl.String, "content": pl.String}))
    mlt: str = pa.Field(isin=TAGS)
    response_words: pl.Int32 = pa.Field(gt=0)

    @pa.dataframe_check(name="assistant_turn_starts_with_its_tag")
    def tagged(cls, data: pa.PolarsData) -> pl.LazyFrame:
        content = pl.col("messages").list.last().struct.field("content")
        return data.lazyframe.select(content.str.starts_with(pl.col("mlt")))

    class Config:
        strict = False


class TLGSchema(pa.DataFrameModel):
    id: str = pa.Field(unique=True)
    instruction: str = pa.Field(str_length={"min_value": 1})
    target: str = pa.Field(isin=[t[5:-1] for t in TAGS])
    level: str = pa.Field(isin=["Level 0", "Level 1", "Level 2"])

    class Config:
        strict = False
