"""User-facing errors: one actionable sentence, printed by the CLI without a traceback."""


class D2ScaleError(Exception):
    """A mistake in the input or the parameters that the user can fix."""
