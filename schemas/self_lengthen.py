"""Self-Lengthen tables: instructions, responses, the two training sets (gen_sft / ext_sft) and queries."""

import pandera.polars as pa
import polars as pl

_MESSAGES = pl.List(pl.Struct({"role": pl.String, "content": pl.String}))


class InstructionsSchema(pa.DataFrameModel):
    id: str = pa.Field(unique=True)
    instruction: str = pa.Field(str_length={"min_value": 1})
    language: str = pa.Field(isin=["en", "zh"])
    iteration: pl.Int32 = pa.Field(ge=1)

    class Config:
        strict = False


class ResponsesSchema(pa.DataFrameModel):
    id: str = pa.Field(unique=True)
    instruction: str = pa.Field(str_length={"min_value": 1})
    iteration: pl.Int32 = pa.Field(ge=1)
    initial_response: str = pa.Field(str_length={"min_value": 1})
    extended_response: str = pa.Field(str_length={"min_value": 1})
    initial_words: pl.Int32 = pa.Field(gt=0)
    extended_words: pl.Int32 = pa.Field(gt=0)
    initial_tokens: pl.Int32 = pa.Field(gt=0)  # by the Generator's tokenizer
    extended_tokens: pl.Int32 = pa.Field(gt=0)  # by the Extender's tokenizer
    growth: float = pa.Field(gt=1.0)  # the 1.2x rule is the method's; here: an extension is never shorter
    extension: pl.Int32 = pa.Field(ge=0)  # which extension submission of its initial response

    class Config:
        strict = False


class PairsSchema(pa.DataFrameModel):
    """A training pair in both shapes: chat `messages` and Alpaca instruction/input/output."""

    id: str = pa.Field(unique=True)
    iteration: pl.Int32 = pa.Field(ge=1)
    messages: _MESSAGES
    instruction: str = pa.Field(str_length={"min_value": 1})
    input: str
    output: str = pa.Field(str_length={"min_value": 1})
    output_tokens: pl.Int32 = pa.Field(gt=0)

    @pa.check("messages", name="user_then_assistant")
    def two_turns(cls, data: pa.PolarsData) -> pl.LazyFrame:
        col = pl.col(data.key)
        return data.lazyframe.select(
            (col.list.len() == 2)
            & (col.list.first().struct.field("role") == "user")
            & (col.list.last().struct.field("role") == "assistant")
        )

    class Config:
        strict = False


class QueriesSchema(pa.DataFrameModel):
    id: str = pa.Field(unique=True)
    query: str = pa.Field(str_length={"min_value": 1})
    constraint_type: str = pa.Field(isin=["about", "range", "above", "below"])
    source: str = pa.Field(isin=["initial", "extended"])
    phrasing: str = pa.Field(isin=["rewritten", "template"])
    constraint_low: pl.Int32 = pa.Field(gt=0)
    constraint_high: pl.Int32 = pa.Field(nullable=True)
    response_words: pl.Int32 = pa.Field(gt=0)
    response_tokens: pl.Int32 = pa.Field(gt=0)

    class Config:
        strict = False
