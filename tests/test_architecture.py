"""The package is laid out by pipeline stage: imports run downward, no circles, a small front door.

Every module's imports of glomseg (at module level, inside functions and under
``TYPE_CHECKING`` alike) are read from its source with :mod:`ast`.
"""

from __future__ import annotations

import ast
import importlib
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

import glomseg

#: The stages, lowest first; a module may import its own stage and those before it.
STAGES = ("errors", "io", "annotations", "tiles", "model", "predict", "evaluate", "distributed")
PACKAGE = Path(glomseg.__file__).parent
#: Modules that only re-export others: the front door and the deprecated module alias.
FACADES = {"glomseg", "glomseg.synthetic"}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def imports_of(path: Path, known: set[str]) -> set[str]:
    """The glomseg modules ``path`` imports, resolved to module names."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.split(".")[0] == "glomseg"}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            if node.module.split(".")[0] != "glomseg":
                continue
            for alias in node.names:  # "from glomseg.io import _tissue" imports a module
                child = f"{node.module}.{alias.name}"
                found.add(child if child in known else node.module)
    return found


def stage(module: str) -> str:
    part = module.split(".")[1]
    assert part in STAGES, f"{module} is in no stage; add it to a subpackage"
    return part


def graph() -> dict[str, set[str]]:
    found = modules()
    known = set(found)
    return {name: imports_of(path, known) for name, path in found.items() if name not in FACADES}


def test_every_module_lives_in_a_stage() -> None:
    for name in graph():
        stage(name)


def test_imports_between_stages_go_downward() -> None:
    wrong = []
    for source, targets in graph().items():
        for target in targets:
            if target in FACADES:
                wrong.append(f"{source} imports the front door {target}; import the module")
            elif STAGES.index(stage(target)) > STAGES.index(stage(source)):
                wrong.append(f"{source} ({stage(source)}) imports {target} ({stage(target)})")
    assert not wrong, "\n".join(sorted(wrong))


def test_no_import_circles() -> None:
    edges = graph()
    state: dict[str, int] = {}
    path: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        path.append(node)
        for target in sorted(edges.get(node, ())):
            if state.get(target) == 1:
                cycle = [*path[path.index(target) :], target]
                pytest.fail("import circle: " + " -> ".join(cycle))
            if target not in state:
                visit(target)
        path.pop()
        state[node] = 2

    for node in sorted(edges):
        if node not in state:
            visit(node)


def test_the_checks_see_a_wrong_way_import(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    from glomseg.predict._scale import predict_image\n")
    assert imports_of(bad, set(modules())) == {"glomseg.predict._scale"}
    assert STAGES.index(stage("glomseg.predict._scale")) > STAGES.index(stage("glomseg.io._x"))


def test_front_door_is_small_and_everything_else_has_one_home() -> None:
    assert 25 <= len(glomseg.__all__) <= 32
    homes: dict[str, str] = {}
    for name in STAGES[1:]:
        package = importlib.import_module(f"glomseg.{name}")
        assert "May import" in (package.__doc__ or ""), name
        assert list(package.__all__) == sorted(package.__all__)
        for public in package.__all__:
            assert public not in homes, f"{public} is public in {homes.get(public)} and {name}"
            homes[public] = name
    for public in glomseg.__all__:
        if public not in ("GlomsegError", "__version__"):
            assert public in homes, f"glomseg.{public} is not public in any stage"
            assert getattr(glomseg, public) is getattr(
                importlib.import_module(f"glomseg.{homes[public]}"), public
            )


@pytest.mark.parametrize("name", sorted(glomseg._MOVED))
def test_old_top_level_names_still_resolve_with_a_warning(name: str) -> None:
    home = glomseg._MOVED[name]
    with pytest.warns(DeprecationWarning, match=f"glomseg.{name} has moved to {home}.{name}"):
        value = getattr(glomseg, name)
    assert value is getattr(importlib.import_module(home), name)
    assert name in dir(glomseg)


def test_unknown_names_are_still_attribute_errors() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(AttributeError, match="no attribute 'tissue_pixelz'"):
            _ = glomseg.tissue_pixelz  # type: ignore[attr-defined]


def test_old_synthetic_module_warns_and_works() -> None:
    code = (
        "import warnings; warnings.simplefilter('always')\n"
        "with warnings.catch_warnings(record=True) as caught:\n"
        "    import glomseg.synthetic as old\n"
        "import glomseg.io.synthetic as new\n"
        "print(old.write_synthetic_slide is new.write_synthetic_slide "
        "and old.make_glomeruli is new.make_glomeruli, "
        "[str(w.message) for w in caught if w.category is DeprecationWarning])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.startswith("True ['glomseg.synthetic has moved to glomseg.io.synthetic")
