"""Length profiles (CASTILLO): sampled completion lengths per prompt and model."""

from lendata.methods.length_profile.method import METHOD

__all__ = ["METHOD"]
