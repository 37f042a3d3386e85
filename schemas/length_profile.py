"""Length profiles (CASTILLO): the sampled completions, and one profile per (prompt, model)."""

import pandera.polars as pa
import polars as pl


class SamplesSchema(pa.DataFrameModel):
    id: str = pa.Field(unique=True, str_length={"min_value": 1})
    prompt_id: str = pa.Field(str_length={"min_value": 1})
    model_label: str = pa.Field(str_length={"min_value": 1})
    sample_index: pl.Int32 = pa.Field(ge=0)
    tokens: pl.Int32 = pa.Field(ge=0)
    words: pl.Int32 = pa.Field(ge=0)
    finish_reason: str = pa.Field(isin=["stop", "length"])

    class Config:
        strict = False


class ProfilesSchema(pa.DataFrameModel):
    id: str = pa.Field(unique=True, str_length={"min_value": 1})
    samples: pl.Int32 = pa.Field(ge=1)
    truncated_share: float = pa.Field(in_range={"min_value": 0, "max_value": 1})
    tokens_mean: float = pa.Field(ge=0)
    tokens_std: float = pa.Field(ge=0)
    tokens_cv: float = pa.Field(ge=0)
    settings: str = pa.Field(str_length={"min_value": 2})

    @pa.dataframe_check(name="percentiles_in_order")
    def ordered(cls, data: pa.PolarsData) -> pl.LazyFrame:
        c = pl.col
        return data.lazyframe.select(
            (c("tokens_min") <= c("tokens_p5")) & (c("tokens_p5") <= c("tokens_p25"))
            & (c("tokens_p25") <= c("tokens_p50")) & (c("tokens_p50") <= c("tokens_p75"))
            & (c("tokens_p75") <= c("tokens_p95")) & (c("tokens_p95") <= c("tokens_max")))

    class Config:
        strict = False
