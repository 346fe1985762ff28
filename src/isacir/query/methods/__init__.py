"""Query-side methods behind one :class:`~isacir.query.QueryEncoder` interface, by name.

Like timm's ``register_model``: a method is one module that defines a :class:`QueryMethod`
subclass and decorates it with :func:`register_method`. The encoder, the trainer, export and
search ask the method what it reads and how it runs; none of them branch on its name.

The built-in methods load (with torch) on first use of the registry. Their names and aliases are
also listed in :data:`BUILTIN`, so that settings can be checked and spelled canonically without
that import; registering a built-in whose aliases differ from the list is an error.
"""

from __future__ import annotations

from types import ModuleType
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .base import QueryMethod, get_method, list_methods, register_method

#: Built-in method name -> its aliases; each method's module must declare the same.
BUILTIN: dict[str, tuple[str, ...]] = {
    "isa": (),
    "isa-symmetric": ("isa_symmetric",),
    "pic2word": (),
}

_REGISTRY_EXPORTS = ("QueryMethod", "get_method", "list_methods", "register_method")

__all__ = ["BUILTIN", "QueryMethod", "canonical_method", "get_method", "list_methods", "register_method"]


def _registry() -> ModuleType:
    """The registry with every built-in method registered (importing a method registers it)."""
    from . import base, isa, isa_symmetric, pic2word  # noqa: F401

    return base


def canonical_method(name: str) -> str:
    """The registered spelling of ``name`` (an alias maps to its method); unknown names raise.

    A built-in name answers without importing torch; any other goes to the registry, where a
    plug-in method may have registered it.
    """
    for method, aliases in BUILTIN.items():
        if name == method or name in aliases:
            return method
    return _registry().canonical_method(name)


def __getattr__(name: str) -> Any:
    if name in _REGISTRY_EXPORTS:
        return getattr(_registry(), name)
    raise AttributeError(f"module 'isacir.query.methods' has no attribute {name!r}")
