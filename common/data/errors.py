"""Errors of the data path that more than one part raises."""


class CorruptFile(ValueError):
    """An events file whose footer or metadata cannot be read: cut short, or not what its name says."""
