"""The error a user can fix: a bad config value, file, or command-line argument.

The ``vqkit`` command prints an :class:`InputError`'s message alone and exits with status 2;
any other exception, a bug included, shows its traceback.
"""


class InputError(ValueError):
    """A bad input of the user's; its message names the value, the file or the setting, and
    the fix."""
