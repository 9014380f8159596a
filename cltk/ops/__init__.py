"""Op wrappers. Each module ``cltk.ops.<family>`` holds the typed wrappers of one kernel family and their
pure-PyTorch ``*_ref`` twins; the wrappers call ``torch.ops.cltk.*`` when a native kernel exists for the
tensors' device and fall back to the reference otherwise."""
import importlib
import pkgutil

__all__ = []
for _m in pkgutil.iter_modules(__path__):
    if not _m.name.startswith("_"):
        _mod = importlib.import_module(f"{__name__}.{_m.name}")
        globals()[_m.name] = _mod
        for _name in getattr(_mod, "__all__", ()):
            if _name in globals() and isinstance(globals()[_name], type(_mod)):
                raise ImportError(f"cltk.ops.{_m.name} exports {_name!r}, which would shadow the module "
                                  f"cltk.ops.{_name}")
            globals()[_name] = getattr(_mod, _name)
            __all__.append(_name)
