"""The error a user can fix: a bad config value, file, or command-line argument.

The ``vqkit`` command prints an :class:`InputError`'s message alone and exits with status 2;
any other exception, a bug included, shows its traceback.
"""


class InputError(ValueError):
    """A bad input of the user's; its message names the value, the file or the setting, and
    the fix."""


def check_int(name: str, value: object, low: int = 1, error: type[ValueError] = ValueError) -> None:
    """Raise ``error`` naming ``name`` unless ``value`` is an int >= ``low`` (bools refused).

    The one check behind every size, count and seed argument of the models and datasets (a zero
    or fractional size otherwise fails deep inside torch); datasets pass ``InputError``.
    """
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise error(f"{name} must be an int >= {low}, got {value!r}")
