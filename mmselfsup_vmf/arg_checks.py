"""Constructor argument checks whose one-line messages name the config key (e.g.
``model.head.num_prototypes must be an integer >= 1 or None, got -1``) instead of the error
torch raises later (``Trying to create tensor with negative dimension``)."""
import math
from numbers import Integral, Real


def check_int(key: str, value, minimum: int = 1, allow_none: bool = False):
    """``value`` is an integer >= ``minimum`` (or None if allowed); returns it."""
    if value is None and allow_none:
        return value
    if isinstance(value, bool) or not isinstance(value, Integral) or value < minimum:
        none = ' or None' if allow_none else ''
        raise ValueError(f'{key} must be an integer >= {minimum}{none}, got {value!r}')
    return value


def check_positive(key: str, value):
    """``value`` is a finite number > 0 (temperatures, eps); returns it."""
    if (isinstance(value, bool) or not isinstance(value, Real) or not math.isfinite(value)
            or value <= 0):
        raise ValueError(f'{key} must be a finite number > 0, got {value!r}')
    return value


def check_fraction(key: str, value):
    """``value`` is in [0, 1] (EMA momenta); returns it."""
    if isinstance(value, bool) or not isinstance(value, Real) or not 0 <= value <= 1:
        raise ValueError(f'{key} must be a number in [0, 1], got {value!r}')
    return value
