"""What each DVC stage really depends on: the project files its command imports and the params it reads.

    python scripts/dvc_deps.py            # each stage's code deps and params, as derived
    python scripts/dvc_deps.py --check    # exit 1, naming every difference with dvc.yaml
    python scripts/dvc_deps.py --write    # rewrite the code deps and params in dvc.yaml (comments kept)

A stage's command is ``sslpipe <stage>``: it runs ``tasks/cli.py`` and the stage's
module (:data:`tasks.stages.STAGES`). Its code dependencies are every project file
those two import at module level, transitively, package ``__init__`` files
included; imports under ``if TYPE_CHECKING:`` run never and are left out. Imports
inside functions are not followed, so a stage may not hide one (only the CLI's
own dispatch may, for commands that are not stages): :func:`lazy_project_imports`
finds them and the test fails on any.

Its params are the ``params.<section>[.<key>...]`` attributes its ``main(params,
args)`` reads; ``main`` may not pass ``params`` on whole, or what it reads could
not be seen here.
"""

from __future__ import annotations

import argparse
import ast
import sys
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:  # run as a script: make the project importable
    sys.path.insert(0, str(REPO_ROOT))

from tasks.params import Params  # noqa: E402
from tasks.stages import STAGES, Stage  # noqa: E402

PROJECT_PACKAGES = ("ssl_core", "tasks", "flows")
CLI_MODULE = "tasks.cli"
DVC_YAML = REPO_ROOT / "dvc.yaml"


def module_file(name: str) -> Path | None:
    """The project file of module ``name`` (a package's ``__init__.py``), or None if not ours."""
    if name.split(".")[0] not in PROJECT_PACKAGES:
        return None
    base = REPO_ROOT.joinpath(*name.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO_ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _module_level_imports(tree: ast.Module) -> list[ast.Import | ast.ImportFrom]:
    """Imports Python runs when the module is imported: top level and inside top-level if/try, not functions."""
    found: list[ast.Import | ast.ImportFrom] = []
    pending: list[ast.stmt] = list(tree.body)
    while pending:
        node = pending.pop(0)
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            found.append(node)
        elif isinstance(node, ast.If) and not _is_type_checking(node):
            pending += node.body + node.orelse
        elif isinstance(node, ast.Try):
            pending += node.body + node.orelse + node.finalbody + [s for h in node.handlers for s in h.body]
    return found


def _imported_names(node: ast.Import | ast.ImportFrom, importer: str, is_package: bool) -> list[str]:
    """Every module the statement executes: the named ones and their parent packages."""
    if isinstance(node, ast.Import):
        targets = [alias.name for alias in node.names]
    else:
        base = node.module or ""
        if node.level:  # relative import: resolve against the importing package
            package = importer if is_package else importer.rpartition(".")[0]
            for _ in range(node.level - 1):
                package = package.rpartition(".")[0]
            base = f"{package}.{base}" if base else package
        # `from package import name` imports the submodule `name` when there is one.
        targets = [base] + [f"{base}.{alias.name}" for alias in node.names]
    names = []
    for target in targets:
        parts = target.split(".")
        names += [".".join(parts[: i + 1]) for i in range(len(parts))]
    return names


def imports_of(path: Path) -> set[Path]:
    """Project files the module at ``path`` imports at module level."""
    tree = ast.parse(path.read_text(), filename=str(path))
    importer = module_name(path)
    found = set()
    for node in _module_level_imports(tree):
        for name in _imported_names(node, importer, path.name == "__init__.py"):
            file = module_file(name)
            if file is not None:
                found.add(file)
    return found


def import_closure(*modules: str) -> set[Path]:
    """Every project file importing ``modules`` executes, themselves included."""
    seen: set[Path] = set()
    pending = []
    for name in modules:
        parts = name.split(".")
        pending += [module_file(".".join(parts[: i + 1])) for i in range(len(parts))]
    while pending:
        path = pending.pop()
        if path is None or path in seen:
            continue
        seen.add(path)
        pending += imports_of(path)
    return seen


def stage_files(stage: Stage) -> set[Path]:
    """Every project file ``sslpipe <stage>`` imports: the CLI's closure and the stage module's."""
    return import_closure(CLI_MODULE, stage.module)


def code_deps(stage: Stage) -> list[str]:
    """The project files ``sslpipe <stage>`` imports, as dvc.yaml lists them.

    A folder whose every file the stage imports is listed as the folder: the same
    files for DVC, and a module added to it later (a new method in
    ``ssl_core/methods/``) is a dependency without an edit here.
    """
    return sorted(as_folders(stage_files(stage)))


def depends_on(deps: list[str], file: str) -> bool:
    """Whether a stage with code ``deps`` (as :func:`code_deps` lists them) depends on ``file``."""
    return any(file == dep or file.startswith(dep + "/") for dep in deps)


def _hashed_files(folder: Path) -> set[Path]:
    """The files DVC hashes in ``folder``: all but bytecode (see .dvcignore)."""
    return {p for p in folder.rglob("*") if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc"}


def as_folders(files: set[Path]) -> set[str]:
    """``files`` as dvc.yaml paths, a folder standing for all of its files when every one is in ``files``."""
    folders = sorted({p.parent for p in files}, key=lambda folder: len(folder.parts))
    listed, covered = set(), set()
    for folder in folders:  # outermost first, so a whole package wins over its subpackages
        if folder in covered or folder == REPO_ROOT:
            continue
        contents = _hashed_files(folder)
        if contents <= files:
            listed.add(folder.relative_to(REPO_ROOT).as_posix())
            covered |= contents | {p for p in folders if folder in p.parents}
    listed |= {p.relative_to(REPO_ROOT).as_posix() for p in files - covered}
    return listed


def lazy_project_imports(stage: Stage) -> list[str]:
    """``file:line`` of each import of a project module inside a function of the stage's code (but the CLI's)."""
    found = []
    for path in stage_files(stage):
        if module_name(path) == CLI_MODULE:
            continue
        tree = ast.parse(path.read_text())
        module_level = {id(node) for node in _module_level_imports(tree)}
        type_checking = {
            id(n)
            for block in ast.walk(tree)
            if isinstance(block, ast.If) and _is_type_checking(block)
            for n in ast.walk(block)
        }
        for node in ast.walk(tree):
            if (
                isinstance(node, (ast.Import, ast.ImportFrom))
                and id(node) not in module_level
                and id(node) not in type_checking
                and any(module_file(n) for n in _imported_names(node, module_name(path), False))
            ):
                found.append(f"{path.relative_to(REPO_ROOT)}:{node.lineno}")
    return sorted(found)


@dataclass(frozen=True)
class ParamsRead:
    keys: list[str]  # dotted YAML keys, e.g. "data.train_split"
    problems: list[str]  # uses of `params` that hide what is read


def params_read(stage: Stage) -> ParamsRead:
    """The params keys the stage's ``main(params, args)`` reads, named as in params.yaml."""
    return params_read_by_main(module_file(stage.module))


def params_read_by_main(path: Path) -> ParamsRead:
    """The params keys ``main(params, args)`` of the module at ``path`` reads."""
    tree = ast.parse(path.read_text())
    main = next((n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "main"), None)
    if main is None:
        return ParamsRead([], [f"{path.name} has no main(params, args)"])
    params_name = main.args.args[0].arg
    parents = {id(child): node for node in ast.walk(main) for child in ast.iter_child_nodes(node)}
    keys, problems = set(), []
    for node in ast.walk(main):
        if not (isinstance(node, ast.Name) and node.id == params_name) or node is main.args.args[0]:
            continue
        chain, top = [], node
        while isinstance(parents.get(id(top)), ast.Attribute):
            top = parents[id(top)]
            chain.append(top.attr)
        if not chain:
            problems.append(
                f"{path.name}:{node.lineno}: main passes `{params_name}` on whole; "
                f"pass the sections it needs, so that the params it reads can be seen"
            )
            continue
        field = Params.model_fields.get(chain[0])
        section = (field.alias or chain[0]) if field else chain[0]
        keys.add(".".join([section, *chain[1:]]))
    # A key read whole makes its sub-keys redundant (`data` covers `data.test_split`).
    covered = {k for k in keys if any(k.startswith(other + ".") for other in keys)}
    return ParamsRead(sorted(keys - covered), problems)


def load_dvc_yaml():
    from ruamel.yaml import YAML

    yaml = YAML()  # round trip: keeps comments and order
    yaml.preserve_quotes = True
    yaml.indent(mapping=2, sequence=4, offset=2)  # dvc.yaml's own layout
    yaml.width = 4096  # no wrapped commands
    return yaml, yaml.load(DVC_YAML.read_text())


def is_code(dep: str) -> bool:
    return dep.split("/")[0] in PROJECT_PACKAGES


def differences() -> list[str]:
    """Every way dvc.yaml differs from what the stages import and read."""
    _, dvc = load_dvc_yaml()
    found = []
    if list(dvc["stages"]) != [s.name for s in STAGES]:
        found.append(f"dvc.yaml stages {list(dvc['stages'])} != tasks.stages {[s.name for s in STAGES]}")
    for stage in STAGES:
        entry = dvc["stages"].get(stage.name)
        if entry is None:
            continue
        if entry["cmd"] != stage.command():
            found.append(f"{stage.name}: cmd {entry['cmd']!r} != {stage.command()!r}")
        declared = [d for d in entry.get("deps", []) if is_code(d)]
        derived = code_deps(stage)
        for missing in sorted(set(derived) - set(declared)):
            found.append(f"{stage.name}: imports {missing} but dvc.yaml does not list it in deps")
        for extra in sorted(set(declared) - set(derived)):
            found.append(f"{stage.name}: dvc.yaml lists {extra} in deps but the stage does not import it")
        data_deps = {d for d in entry.get("deps", []) if not is_code(d)}
        for option in stage.inputs:
            if not {option.default.as_posix(), option.required_path.as_posix()} & data_deps:
                found.append(f"{stage.name}: input {option.default} (--{option.name}) is not in its dvc.yaml deps")
        outs = {
            next(iter(o)) if isinstance(o, dict) else o
            for kind in ("outs", "metrics", "plots")
            for o in entry.get(kind, [])
        }
        for option in stage.outputs:
            declared_out = any(Path(o) == option.default or option.default in Path(o).parents for o in outs)
            if option.versioned and not declared_out:
                found.append(f"{stage.name}: output {option.default} (--{option.name}) is not among its dvc.yaml outs")
            if not option.versioned and declared_out:
                found.append(f"{stage.name}: {option.default} (--{option.name}) is local scratch, not a dvc.yaml out")
        read = params_read(stage)
        found += [f"{stage.name}: {problem}" for problem in read.problems]
        if sorted(entry.get("params", [])) != read.keys:
            found.append(
                f"{stage.name}: params {sorted(entry.get('params', []))} in dvc.yaml, but main reads {read.keys}"
            )
        found += [
            f"{stage.name}: lazy import of project code at {where} is invisible to DVC; import at module level"
            for where in lazy_project_imports(stage)
        ]
    return found


def write() -> None:
    """Rewrites each stage's code deps (after its data deps) and params in dvc.yaml."""
    yaml, dvc = load_dvc_yaml()
    for stage in STAGES:
        entry = dvc["stages"][stage.name]
        data_deps = [d for d in entry.get("deps", []) if not is_code(d)]
        entry["deps"] = data_deps + code_deps(stage)
        entry["params"] = params_read(stage).keys
    with DVC_YAML.open("w") as out:
        yaml.dump(dvc, out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    action = parser.add_mutually_exclusive_group()
    action.add_argument("--check", action="store_true", help="exit 1 if dvc.yaml differs, naming each difference")
    action.add_argument("--write", action="store_true", help="update dvc.yaml's code deps and params")
    args = parser.parse_args(argv)
    if args.write:
        write()
    if args.check or args.write:
        problems = differences()
        print("\n".join(problems) or "dvc.yaml matches what every stage imports and reads.")
        return 1 if problems else 0
    for stage in STAGES:
        print(f"{stage.name}:\n  params: {', '.join(params_read(stage).keys)}")
        print("".join(f"  {dep}\n" for dep in code_deps(stage)), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
