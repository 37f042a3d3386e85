"""Ruler: Meta Length Tokens on any SFT table, and a target-length-generation evaluation set (tags.py); the
recipe contract in method.py."""

from lendata.methods.ruler.method import METHOD

__all__ = ["METHOD"]
