"""The package's layers: nothing in a lower layer imports a higher one (issue 11).

Order, lowest first: base modules (``atomic``, ``redact``, ``threads``, ``names``, ``config``,
``tracking``), ``data``, ``models``, ``detector``, ``training``, ``sweep``, ``evaluation``,
``registry``, ``serving``, ``scheduling``, then the ``vigil`` command (``cli``). Imports are read
from the source (top level and inside functions), so a lazy import counts too.
"""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[2] / "src"
LAYERS = [
    {"atomic", "redact", "threads", "names", "locations", "config_base", "config", "tracking"},
    {"data"},
    {"models"},
    {"detector"},
    {"training"},
    {"sweep"},
    {"evaluation"},
    {"registry"},
    {"serving"},
    {"scheduling"},
    {"cli", "cli_commands"},
]
# Deliberate, documented exceptions: (importer prefix, imported prefix) -> why.
ALLOWED = {
    ("vigil.config", "vigil.models.registry"): (
        "params validation checks each model.<family> section with that family's own config "
        "class: the family records and config classes are torch-free leaves of the config layer"
    ),
    ("vigil.serving.console.cycles", "vigil.scheduling"): (
        "the operator console's 'run one cycle now' button runs the retrain cycle, under the "
        "same lock and gate as `vigil retrain`, inside the serving process"
    ),
}


def _layer(module: str) -> int | None:
    parts = module.split(".")
    if len(parts) < 2 or parts[0] != "vigil":
        return None
    for index, names in enumerate(LAYERS):
        if parts[1] in names:
            return index
    return None


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module)
    return {name for name in names if name.startswith("vigil.")}


def test_every_top_level_name_has_a_layer():
    unknown = sorted(
        p.stem if p.is_file() else p.name
        for p in (SRC / "vigil").iterdir()
        if (p.suffix == ".py" or (p / "__init__.py").is_file())
        and p.stem != "__init__"
        and _layer(f"vigil.{p.stem if p.is_file() else p.name}") is None
    )
    assert not unknown, f"give these a layer in LAYERS: {unknown}"


def test_no_lower_layer_imports_a_higher_one():
    upward = []
    for path in sorted((SRC / "vigil").rglob("*.py")):
        module = ".".join(path.relative_to(SRC).with_suffix("").parts).removesuffix(".__init__")
        mine = _layer(module)
        if mine is None:
            continue
        for imported in _imports(path):
            theirs = _layer(imported)
            if theirs is None or theirs <= mine:
                continue
            if any(module.startswith(a) and imported.startswith(b) for a, b in ALLOWED):
                continue
            upward.append(f"{module} imports {imported}")
    assert not upward, "lower layers import higher ones:\n" + "\n".join(upward)
