"""Extension points: model families and exemplar readers that other packages add to guard.

A package adds to guard without editing it, the way simonw/llm plugins and TransformerLens
adapters do: by calling `guard.models.register_architecture` / `guard.policy.exemplars.register_reader` at
import, or by declaring an entry point that guard loads the first time it looks something up:

```toml
[project.entry-points."guard.architectures"]
mamba_like = "my_package.guard_rows:ROW"          # an Architecture; the name is the model_type

[project.entry-points."guard.readers"]
my_format = "my_package.readers:read_my_format"  # a Reader, or a plain function(source) -> exemplars
```
"""

from __future__ import annotations

from collections.abc import Callable
from importlib.metadata import entry_points

from guard.errors import GuardError

ARCHITECTURES_GROUP = "guard.architectures"
READERS_GROUP = "guard.readers"

_loaded: set[str] = set()


def load_entry_points(group: str, register: Callable[[str, object], None]) -> None:
    """Register every entry point of `group` once per process: `register(name, loaded object)`.
    A plugin that fails to import is reported in one line naming it."""
    if group in _loaded:
        return
    _loaded.add(group)
    for point in entry_points(group=group):
        try:
            value = point.load()
        except Exception as exc:
            raise GuardError(f"plugin '{point.name}' ({point.value}, group {group}) failed to load: {exc}") from exc
        register(point.name, value)


def forget_entry_points() -> None:
    """Load entry points again on the next lookup (after installing a plugin in a running process)."""
    _loaded.clear()
