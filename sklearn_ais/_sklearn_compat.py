"""scikit-learn's private helpers that the package relies on, imported in this one place.

Supported: scikit-learn >= 1.6 (estimator tags, ``validate_data``) and below 1.10;
CI runs the estimator tests with the lowest (1.6.1) and the newest release. If a
release moves one of these names, this module is the only one to change.

:class:`Interval` is scikit-learn's, except that a boolean never satisfies it:
scikit-learn's accepts ``True`` for ``Interval(Integral, 1, None)`` (``bool``
is a subclass of ``int``), so ``n_features_to_select=True`` would silently mean
1. Every count and every number in the package's ``_parameter_constraints``
goes through this one class, so a boolean is refused everywhere.
"""

from numbers import Integral

import numpy as np
from sklearn.base import _fit_context
from sklearn.utils._param_validation import HasMethods, RealNotInt, StrOptions, validate_params
from sklearn.utils._param_validation import Interval as _SklearnInterval

__all__ = ["HasMethods", "Interval", "RealNotInt", "StrOptions", "_fit_context", "is_count", "validate_params"]


class Interval(_SklearnInterval):
    """scikit-learn's ``Interval`` constraint that a boolean (``bool``, ``np.bool_``) never satisfies."""

    def is_satisfied_by(self, val):
        if isinstance(val, (bool, np.bool_)):
            return False
        return super().is_satisfied_by(val)

    def __str__(self):
        return super().__str__() + " (not a boolean)"


def is_count(value, low: int = 1) -> bool:
    """Whether ``value`` is an integer (not a boolean) of at least ``low``: the rule of every count parameter."""
    return isinstance(value, Integral) and not isinstance(value, (bool, np.bool_)) and value >= low
