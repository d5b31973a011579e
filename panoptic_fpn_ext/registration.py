"""Idempotent registration into Detectron2's registries and catalogs.

Detectron2's ``Registry.register`` and ``DatasetCatalog.register`` raise when a name is taken.
Importing this plugin twice (e.g. a module reload, or two projects that each load it) re-runs the
registrations; these helpers make that a no-op for the plugin's own objects while still refusing
to overwrite someone else's object of the same name.
"""

from typing import Any, Callable, Dict, Optional

from detectron2.data import DatasetCatalog, MetadataCatalog
from fvcore.common.registry import Registry

__all__ = ["register_once", "register_dataset_once"]


def _qualified_name(obj: Any) -> str:
    return f"{getattr(obj, '__module__', '?')}.{getattr(obj, '__qualname__', repr(obj))}"


def _unwrap(fn: Callable) -> Callable:
    """The function behind a ``functools.partial`` (dataset loaders are often partials)."""
    return getattr(fn, "func", fn)


def register_once(registry: Registry, name: Optional[str] = None) -> Callable:
    """Decorator: ``registry.register()`` that tolerates re-registering the same object.

    Args:
        registry: a Detectron2/fvcore ``Registry``.
        name: the name to register under (default: the object's ``__name__``).
    Raises:
        ValueError: the name is already taken by a different object.
    """

    def deco(obj: Any) -> Any:
        key = name or obj.__name__
        if key in registry:
            existing = registry.get(key)
            if _qualified_name(existing) != _qualified_name(obj):
                raise ValueError(
                    f"Cannot register {_qualified_name(obj)} as '{key}' in registry "
                    f"'{registry._name}': already taken by {_qualified_name(existing)}"
                )
            registry._obj_map[key] = obj  # same object re-imported: keep the newest definition
            return obj
        registry._do_register(key, obj)
        return obj

    return deco


def register_dataset_once(name: str, loader: Callable[[], list], metadata: Dict[str, Any]) -> None:
    """Register ``name`` in ``DatasetCatalog`` with ``metadata`` unless it is already there.

    Raises:
        ValueError: ``name`` is registered with a loader from another module.
    """
    if name in DatasetCatalog.list():
        existing = DatasetCatalog[name]
        if _qualified_name(_unwrap(existing)) != _qualified_name(_unwrap(loader)):
            raise ValueError(
                f"Dataset '{name}' is already registered by {_qualified_name(existing)}"
            )
        return
    DatasetCatalog.register(name, loader)
    MetadataCatalog.get(name).set(**metadata)
