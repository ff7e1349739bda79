"""bench: feature store and benchmark harness for transfer learning in melanoma screening."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("bench")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0+unknown"
