"""Preference pairs for DPO (TRL's format) from judged samples, selected to be length-matched."""

from lendata.methods.preferences.method import METHOD

__all__ = ["METHOD"]
