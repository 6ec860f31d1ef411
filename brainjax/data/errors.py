"""Errors about a user's copy of a dataset release."""


class ReleaseError(ValueError):
  """The user's copy of a dataset is missing files or holds unexpected data."""
