"""The method registry: name -> :class:`CacheMethod` instance."""

from __future__ import annotations

from .base import CacheMethod

_REGISTRY: dict[str, CacheMethod] = {}
# Block type letters a plan knows (plan.py): full, conservative, aggressive, reuse, forecast.
BLOCK_TYPES = "FTARP"


def register_method(method: CacheMethod, *, replace: bool = False) -> CacheMethod:
    """Make ``method`` available as ``CacheConfig(method=method.name)``. Returns it (usable as a decorator
    on an instance factory). A name already taken is an error unless ``replace=True``."""
    if not isinstance(method, CacheMethod):
        raise TypeError(
            f"register_method takes a CacheMethod instance, got {type(method).__name__}; "
            f"subclass duca_common.cache.CacheMethod and pass an instance"
        )
    name = method.name
    if not (isinstance(name, str) and name.isidentifier() and name.lower() == name):
        raise ValueError(f"method name {name!r} is invalid: allowed a lower-case identifier (set the class's name)")
    if name in _REGISTRY and not replace:
        raise ValueError(f"method {name!r} is already registered; pass replace=True to replace it")
    try:
        letter = method.non_full_letter(1)
    except NotImplementedError as err:
        raise ValueError(str(err)) from None
    if letter not in BLOCK_TYPES:
        raise ValueError(f"method {name!r}: non_full_letter must return one of {tuple(BLOCK_TYPES)}, got {letter!r}")
    _REGISTRY[name] = method
    return method


def unregister_method(name: str) -> None:
    """Remove a method registered from outside (tests); the built-in methods stay."""
    _REGISTRY.pop(name, None)


def get_method(name: str) -> CacheMethod:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(
            f"unknown cache method {name!r}: allowed one of {available_methods()} "
            f"(register new ones with duca_common.cache.register_method)"
        ) from None


def available_methods() -> tuple[str, ...]:
    """Names of every registered method, built-in ones first, in registration order."""
    return tuple(_REGISTRY)
