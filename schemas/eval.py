"""Evaluation results: one scored answer per row."""

import pandera.polars as pa


class ResultsSchema(pa.DataFrameModel):
    id: str = pa.Field(unique=True, str_length={"min_value": 1})
    suite: str = pa.Field(isin=["longbench_write", "longwrite_ruler", "longen", "lveval"])
    score: float = pa.Field(in_range={"min_value": 0, "max_value": 100})
    sq: float = pa.Field(nullable=True, in_range={"min_value": 0, "max_value": 100})
    finish_reason: str = pa.Field(isin=["stop", "length"])
    metric: str = pa.Field(isin=["sl", "longen", "gated_f1", "f1", "rouge_l_blacklist"])

    class Config:
        strict = False
