"""The zarr feature store: one feature set per (dataset, backbone, key), resumable, with provenance."""
