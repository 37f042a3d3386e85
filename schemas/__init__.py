"""Data contracts: one pandera (polars) schema per table kind, applied to every split before it is published.
A method names the schema of each of its splits (lendata.methods.base.Split)."""

from schemas.sft import SFTSchema
from schemas.validate import check_rows, split_valid

__all__ = ["SFTSchema", "check_rows", "split_valid"]
