"""lendata: build, validate, store, query and publish long-output and variable-length LLM corpora."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("lendata")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0"
