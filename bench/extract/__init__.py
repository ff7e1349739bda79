"""Extraction: ONNX export and its caches, test-time views, the pipeline into the feature store."""
