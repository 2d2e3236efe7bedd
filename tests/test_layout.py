"""The house: the six modules of the paper import each other in one direction only, and none of
them imports experiments/ or matplotlib (which only experiments/ needs)."""
import ast
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CORE = ("losses", "models", "data", "theory", "eval", "train")


def imports_of(module):
    """The top-level names that module.py imports, anywhere in the file."""
    with open(os.path.join(ROOT, f"{module}.py")) as f:
        tree = ast.parse(f.read())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def test_core_imports_run_one_way():
    """train -> eval -> {losses, models, data, theory}: each module imports only modules
    listed before it in CORE, so there is no circle."""
    for i, module in enumerate(CORE):
        core_imports = imports_of(module) & set(CORE)
        assert core_imports <= set(CORE[:i]), (module, core_imports - set(CORE[:i]))


def test_core_never_loads_experiments_or_matplotlib():
    code = (f"import sys; import {', '.join(CORE)}; print(sorted({{m.split('.')[0] for m in "
            "sys.modules} & {'experiments', 'matplotlib', 'sweep', 'bench', 'plots', 'lab'}))")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
    for module in CORE:
        assert not imports_of(module) & {"experiments", "matplotlib"}, module
