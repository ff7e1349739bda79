"""The zarr feature store: one feature set per (dataset, backbone, key), resumable, with provenance."""

from featurestore.errors import StoreError
from featurestore.keys import feature_key, is_name, parse_key

__all__ = ["FeatureSet", "FeatureStore", "SetInfo", "SetWriter", "StoreError", "feature_key", "is_name", "parse_key"]
_STORE = {"FeatureSet", "FeatureStore", "SetInfo", "SetWriter"}


def __getattr__(name: str):
    """The store's classes load zarr: they are imported when first used, so names, keys and errors come cheap
    (the CLI's start-up imports them)."""
    if name in _STORE:
        from featurestore import store

        return getattr(store, name)
    raise AttributeError(f"module 'featurestore' has no attribute {name!r}")
