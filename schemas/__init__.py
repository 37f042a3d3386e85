"""Data contracts: one pandera (polars) schema per table kind, applied before a version is committed."""

from schemas.sft import SFTSchema
from schemas.validate import SCHEMAS, split_valid

__all__ = ["SCHEMAS", "SFTSchema", "split_valid"]
