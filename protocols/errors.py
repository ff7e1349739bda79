class ProtocolError(Exception):
    """A design, split or evaluation that cannot run as asked (e.g. a design that does not fit the dataset)."""
