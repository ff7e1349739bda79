"""The zarr feature store: one feature set per (dataset, backbone, key), resumable, with provenance."""

from featurestore.errors import StoreError
from featurestore.keys import feature_key, is_name, parse_key
from featurestore.store import FeatureSet, FeatureStore, SetInfo, SetWriter

__all__ = ["FeatureSet", "FeatureStore", "SetInfo", "SetWriter", "StoreError", "feature_key", "is_name", "parse_key"]
