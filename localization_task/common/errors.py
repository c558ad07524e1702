class DataError(ValueError):
    """A problem with the user's data, explained in one sentence."""
