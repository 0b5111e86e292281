"""The scikit-learn estimator contract for lensworks estimators: hyper-parameters in
``__init__``, learned ``*_`` attributes set by ``fit``, which returns ``self``."""

from __future__ import annotations

import functools
import inspect
import types
import warnings
from typing import Any, Callable

from lensworks.model import LensworksError

__all__ = ["Estimator", "NotFittedError", "fit_method"]


class NotFittedError(LensworksError, AttributeError):
    """A learned attribute was read before ``fit`` (an AttributeError too, so ``hasattr`` is False).

    Example:
        >>> from lensworks.geometry import NeighbourApproximation
        >>> NeighbourApproximation().windows_
        Traceback (most recent call last):
        lensworks.geometry._estimator.NotFittedError: NeighbourApproximation is not fitted yet: call .fit(model, corpus) before reading windows_
    """


class Estimator:
    """Base of lensworks estimators: ``get_params``, ``set_params``, a repr of the hyper-parameters,
    and a :class:`NotFittedError` for the names in ``_fitted_names`` before ``fit``.

    A subclass lists its hyper-parameters as keyword arguments of ``__init__`` that are stored
    unchanged under the same names, and sets ``_fitted_marker`` (an attribute ``fit`` sets) and
    ``_fit_call`` (how to call ``fit``, for the error message).

    Example:
        >>> from lensworks.geometry import NeighbourApproximation
        >>> NeighbourApproximation(window=4).get_params()["window"]
        4
    """

    _fitted_names: frozenset[str] = frozenset()
    _fitted_marker: str = ""
    _fit_call: str = "fit(...)"

    @classmethod
    def _param_names(cls) -> list[str]:
        sig = inspect.signature(cls.__init__)
        return [p.name for p in sig.parameters.values() if p.name != "self" and p.kind is not p.VAR_KEYWORD]

    def get_params(self, deep: bool = True) -> dict[str, Any]:
        """The hyper-parameters, by name (``deep`` is accepted for scikit-learn and ignored).

        Example:
            >>> from lensworks.geometry import NeighbourApproximation
            >>> NeighbourApproximation(window=4).get_params()["window"]
            4
        """
        return {name: getattr(self, name) for name in self._param_names()}

    def set_params(self, **params: Any) -> "Estimator":
        """Set hyper-parameters by name and return ``self``; changing index settings needs a new ``fit``.

        Example:
            >>> from lensworks.geometry import NeighbourApproximation
            >>> NeighbourApproximation(window=4).set_params(thresholds=0.8).thresholds
            0.8
        """
        valid = self._param_names()
        for name, value in params.items():
            if name not in valid:
                raise LensworksError(f"{type(self).__name__} has no hyper-parameter {name!r}; expected one of {valid}")
            setattr(self, name, value)
        return self

    def _is_fitted(self) -> bool:
        return self._fitted_marker in self.__dict__

    def __getattr__(self, name: str) -> Any:  # only called when normal lookup fails
        if name in type(self)._fitted_names and not self._is_fitted():
            raise NotFittedError(f"{type(self).__name__} is not fitted yet: call {self._fit_call} "
                                 f"before reading {name}")
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def _params_repr(self) -> str:
        return ", ".join(f"{k}={v!r}" for k, v in self.get_params().items())

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._params_repr()})"


def fit_method(func: Callable[..., Any] | None = None, *, legacy: Callable[..., None] | None = None) -> Any:
    """Make ``fit`` an instance method that also answers the deprecated classmethod call.

    ``est.fit(model, data, **fit_args)`` runs ``func``. ``Cls.fit(model, data, **params,
    **fit_args)`` warns with a DeprecationWarning, builds ``Cls(**params)`` from the keyword
    arguments that are hyper-parameters, fits it with the rest, lets ``legacy(est)`` restore
    attributes the old call set, and returns it.

    Example:
        >>> class Est(Estimator):
        ...     _fitted_names = frozenset({"n_"})
        ...     _fitted_marker = "n_"
        ...     def __init__(self, k=1):
        ...         self.k = k
        ...     @fit_method
        ...     def fit(self, model, data):
        ...         self.n_ = len(data)
        ...         return self
        >>> Est(k=2).fit(None, [1, 2, 3]).n_
        3
    """
    if func is None:
        return functools.partial(fit_method, legacy=legacy)

    class _Fit:
        def __get__(self, obj: Any, cls: type | None = None) -> Callable[..., Any]:
            if obj is not None:
                return types.MethodType(func, obj)

            @functools.wraps(func)
            def deprecated(*args: Any, **kwargs: Any) -> Any:
                return _deprecated_fit(cls, *args, **kwargs)

            return deprecated

    def _deprecated_fit(cls: type, *args: Any, **kwargs: Any) -> Any:
        names = cls._param_names()
        params = {k: kwargs.pop(k) for k in list(kwargs) if k in names}
        warnings.warn(
            f"{cls.__name__}.fit(..., {', '.join(f'{k}=...' for k in params) or 'hyper-parameters'}) on the class "
            f"is deprecated; pass hyper-parameters to the constructor: {cls.__name__}(...).fit(...)",
            DeprecationWarning, stacklevel=3,
        )
        est = cls(**params).fit(*args, **kwargs)
        if legacy is not None:
            legacy(est)
        return est

    fit = _Fit()
    fit.__doc__ = func.__doc__
    return fit
