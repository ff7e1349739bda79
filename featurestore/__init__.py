"""The zarr feature store: one feature set per (dataset, backbone, key), resumable, with provenance."""

from featurestore.errors import StoreError
from featurestore.store import FeatureSet, FeatureStore, SetInfo, SetWriter

__all__ = ["FeatureSet", "FeatureStore", "SetInfo", "SetWriter", "StoreError"]
