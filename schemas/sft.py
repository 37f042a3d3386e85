"""Long-output SFT rows (the LongWriter-6k shape plus length columns)."""

import pandera.polars as pa
import polars as pl


class SFTSchema(pa.DataFrameModel):
    id: str = pa.Field(unique=True, str_length={"min_value": 1})
    messages: pl.List(pl.Struct({"role": pl.String, "content": pl.String}))
    instruction: str = pa.Field(str_length={"min_value": 1})
    target_words: pl.Int32 = pa.Field(gt=0)
    response_words: pl.Int32 = pa.Field(ge=0)
    response_tokens: pl.Int32 = pa.Field(ge=0)
    length_score: float = pa.Field(in_range={"min_value": 0, "max_value": 100})
    finish_reason: str = pa.Field(isin=["stop", "length"])
    engine: str = pa.Field(str_length={"min_value": 1})
    model: str = pa.Field(str_length={"min_value": 1})

    @pa.check("messages", name="user_then_assistant_no_empty_turn")
    def messages_well_formed(cls, data: pa.PolarsData) -> pl.LazyFrame:
        """At least two turns, the last one the assistant's, no empty content."""
        col = pl.col(data.key)
        return data.lazyframe.select(
            (col.list.len() >= 2)
            & (col.list.last().struct.field("role") == "assistant")
            & (col.list.eval(pl.element().struct.field("content").str.len_chars().min()).list.first() > 0)
        )

    class Config:
        strict = False  # methods add their own columns next to these
        coerce = False
