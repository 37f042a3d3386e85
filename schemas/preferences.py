"""DPO preference pairs in TRL's conversational format (prompt, chosen, rejected: message lists) with their scores
and lengths."""

import pandera.polars as pa
import polars as pl


class PairsSchema(pa.DataFrameModel):
    id: str = pa.Field(unique=True, str_length={"min_value": 1})
    prompt: pl.List(pl.Struct({"role": pl.String, "content": pl.String}))
    chosen: pl.List(pl.Struct({"role": pl.String, "content": pl.String}))
    rejected: pl.List(pl.Struct({"role": pl.String, "content": pl.String}))
    chosen_sq: float = pa.Field(in_range={"min_value": 0, "max_value": 100})
    rejected_sq: float = pa.Field(in_range={"min_value": 0, "max_value": 100})
    chosen_words: pl.Int32 = pa.Field(ge=0)
    rejected_words: pl.Int32 = pa.Field(ge=0)

    @pa.dataframe_check(name="chosen_scores_higher")
    def ordered(cls, data: pa.PolarsData) -> pl.LazyFrame:
        return data.lazyframe.select(pl.col("chosen_sq") > pl.col("rejected_sq"))

    class Config:
        strict = False
