"""Query-side methods behind one :class:`~isacir.query.QueryEncoder` interface, by name.

Like timm's ``register_model``: a method is one module that defines a :class:`QueryMethod`
subclass and decorates it with :func:`register_method`. The encoder, the trainer, export and
search ask the method what it reads and how it runs; none of them branch on its name.
"""

from __future__ import annotations

from .base import QueryMethod, canonical_method, get_method, list_methods, register_method

# Importing the built-in methods registers them.
from . import isa, isa_symmetric, pic2word  # noqa: E402,F401  isort: skip

__all__ = ["QueryMethod", "canonical_method", "get_method", "list_methods", "register_method"]
