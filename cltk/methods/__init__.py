"""Continual-learning methods: one small file each, registered by name (see :mod:`cltk.methods.base`)."""
from cltk.methods.base import (Batch, Method, MethodConfig, available_methods, get_method, method_class,
                               register)

__all__ = ["Batch", "Method", "MethodConfig", "available_methods", "get_method", "method_class", "register"]
