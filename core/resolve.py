"""Objects named by dotted paths in configs and checkpoints, imported only from inside a package.

Env configs name their factory and scripted controller, checkpoints their algorithm class,
COMBO's config its termination function. Configs and checkpoints travel with datasets and
runs, so a path is resolved only when its *module* lies inside the package the caller
allows: loading a config or a checkpoint can never import and call arbitrary code.
"""

from __future__ import annotations

import importlib
from typing import Any


def resolve(path: Any, prefix: str, *, what: str, rule: str, base: type | None = None, kind: str | None = None) -> Any:
    """The object at dotted ``path`` (``module.attribute``), whose module must start with ``prefix``.

    ``prefix`` is matched against the module's dotted name as a string: ``"o2o.envs."``
    admits the modules below ``o2o.envs`` (not the package itself), and
    ``"o2o.policies.behavior.scripted"`` admits that module and its siblings
    ``scripted_lift``, ``scripted_maze``...

    With ``base``, the object must be a subclass of it; without, it must be callable.
    Every failure is a :class:`ValueError` that names ``what`` and ``path``:

    - ``"<what> <path> refused: <rule>"`` when the module lies outside ``prefix`` (nothing
      is imported); ``rule`` says where such objects must live, with an example;
    - ``"<what> <path> not found: <reason>"`` when the module or attribute does not exist;
    - ``"<what> <path> is not <kind>"`` when it is not a subclass of ``base`` (or not callable).
    """
    module, _, attr = path.rpartition(".") if isinstance(path, str) else ("", "", "")
    if not (module.startswith(prefix) and attr):
        raise ValueError(f"{what} {path!r} refused: {rule}")
    try:
        obj = getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError, ValueError) as e:
        raise ValueError(f"{what} {path!r} not found: {e}") from e
    if base is None:
        if not callable(obj):
            raise ValueError(f"{what} {path!r} is not {kind or 'callable'}")
    elif not (isinstance(obj, type) and issubclass(obj, base)):
        raise ValueError(f"{what} {path!r} is not {kind or f'a subclass of {base.__name__}'}")
    return obj
