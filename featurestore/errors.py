class StoreError(Exception):
    """A feature-store problem the user can fix (missing set, stale set, foreign store); the message says how."""
