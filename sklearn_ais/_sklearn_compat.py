"""scikit-learn's private helpers that the package relies on, imported in this one place.

Supported: scikit-learn >= 1.6 (estimator tags, ``validate_data``) and below 1.10;
CI runs the estimator tests with the lowest (1.6.1) and the newest release. If a
release moves one of these names, this module is the only one to change.
"""

from sklearn.base import _fit_context
from sklearn.utils._param_validation import HasMethods, Interval, RealNotInt, StrOptions, validate_params

__all__ = ["HasMethods", "Interval", "RealNotInt", "StrOptions", "_fit_context", "validate_params"]
