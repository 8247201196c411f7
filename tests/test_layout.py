"""The house rules that keep the code base readable: layering, one home per idea, module
size, generated reference docs."""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("aepipe", "stores", "flows", "tasks", "ae_models", "feature_store")
# what each package must never import: the CLI -> flows -> tasks -> (ae_models, feature_store);
# the store settings are the ground floor; ae_models is pure tensors (a served model carries it);
# ae_models.vocabulary, the names every package shares, imports nothing and is allowed to all
FORBIDDEN = {
    "stores": {"aepipe", "flows", "tasks", "ae_models", "feature_store", "prefect", "mlflow"},
    "ae_models": {"aepipe", "stores", "flows", "tasks", "feature_store", "prefect", "mlflow"},
    "feature_store": {"aepipe", "flows", "tasks", "ae_models", "prefect", "mlflow"},
    "tasks": {"aepipe", "flows"},
    "flows": {"aepipe"},
}
# tasks/pyfunc_model.py is the served model's own file: MLflow, pandas and ae_models only
SERVED = {"tasks/pyfunc_model.py": {"aepipe", "stores", "flows", "tasks", "feature_store"}}
MAX_FUNCTION_LINES = 80


def _root(module: str) -> str:
    """A module's package, as the layering rules name it: the vocabulary is its own floor."""
    return module if module == "ae_models.vocabulary" else module.split(".")[0]


def imported_roots(path: Path) -> set[str]:
    """Top-level names of every module ``path`` imports, at any depth of the file
    (``ae_models.vocabulary``, the ground floor every package may import, by its own name)."""
    roots = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            roots |= {_root(a.name) for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            roots.add(_root(node.module))
    return roots


def modules() -> list[Path]:
    return sorted(p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py"))


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_imports_run_downward(package: str) -> None:
    bad = {
        str(p.relative_to(ROOT)): sorted(imported_roots(p) & FORBIDDEN[package])
        for p in (ROOT / package).rglob("*.py")
    }
    assert {k: v for k, v in bad.items() if v} == {}


def test_the_served_model_file_imports_nothing_of_the_pipeline() -> None:
    for rel, forbidden in SERVED.items():
        assert imported_roots(ROOT / rel) & forbidden == set()


# stores.data's low-level verbs: the stages use its accessor (need, present, share,
# share_once, drop, arrive), so a result cached by another home is always usable (issue 40.1)
DATA_STORE_INTERNALS = {"fetch", "publish", "localize", "local_copy", "ensure_here", "discard"}


# every import a released tasks/pyfunc_model.py made (git log -p tasks/pyfunc_model.py): a
# champion logged by it is loaded in-process by the next run's promotion check, and its code
# then imports from this ae_models (the one already imported), not from its own copy
LOGGED_MODEL_IMPORTS = (
    "from ae_models import encode_and_score",
    "from ae_models import load_model",
    "from ae_models.outputs import ENTITY_ID, KNOWN_INPUTS, score_outputs",
    "from ae_models.outputs import KNOWN_INPUTS, score_outputs",
    "from ae_models.preprocessing import NORMALIZER_FILE, Normalizer",
    "from ae_models.runtime import SCORING_PRECISION",
    "from ae_models.scoring import Scorer, score_rows",
    "from ae_models.vocabulary import ENTITY_KEY",
)


@pytest.mark.parametrize("line", LOGGED_MODEL_IMPORTS)
def test_models_logged_by_earlier_releases_still_import(line: str) -> None:
    """Moving or renaming what a logged model imports would make every run after an upgrade
    fail its champion comparison: these names stay where released models look for them."""
    exec(line, {})


def test_the_served_model_file_imports_only_what_is_kept_for_logged_models() -> None:
    """The served model's imports are the kept ones, so a new import is a decision."""
    tree = ast.parse((ROOT / "tasks" / "pyfunc_model.py").read_text())
    kept = {ast.unparse(ast.parse(line).body[0]) for line in LOGGED_MODEL_IMPORTS}
    kept_names = {
        (n.module, a.name)
        for line in kept
        for n in ast.parse(line).body
        if isinstance(n, ast.ImportFrom)
        for a in n.names
    }
    used = {
        (n.module, a.name)
        for n in ast.walk(tree)
        if isinstance(n, ast.ImportFrom) and (n.module or "").startswith("ae_models")
        for a in n.names
    }
    assert used <= kept_names


def test_stages_reach_the_data_store_through_its_accessor() -> None:
    hand = {}
    for path in modules():
        if path.is_relative_to(ROOT / "stores"):
            continue
        tree = ast.parse(path.read_text())
        names = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
                if node.value.id == "data_store" and node.attr in DATA_STORE_INTERNALS:
                    names.add(node.attr)
            elif isinstance(node, ast.ImportFrom) and node.module == "stores.data":
                names |= {a.name for a in node.names} & DATA_STORE_INTERNALS
        if names:
            hand[str(path.relative_to(ROOT))] = sorted(names)
    assert hand == {}


def _compared_strings(node: ast.Compare) -> set[str]:
    """String constants a comparison holds, in tuples, lists and sets too."""
    found = set()
    for side in (node.left, *node.comparators):
        for leaf in ast.walk(side):
            if isinstance(leaf, ast.Constant) and isinstance(leaf.value, str):
                found.add(leaf.value)
    return found


def test_source_formats_are_told_apart_only_by_their_readers() -> None:
    """Issue 42: a source kind lives in its reader (tasks/io/readers/<name>.py); no code
    elsewhere compares a value with a reader's name (``fmt == "csv"``, ``in ("idx", ...)``),
    so a new reader needs no edit outside its module and the registry's line."""
    from tasks.io.readers import reader_names

    names = set(reader_names())
    readers = ROOT / "tasks" / "io" / "readers"
    branches = {}
    # the catalog's own kinds ("sql": a SQLAlchemy catalog) are not source formats
    for path in (p for p in modules() if p.parts[len(ROOT.parts)] in ("aepipe", "flows", "tasks")):
        if path.is_relative_to(readers):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Compare) and (hit := _compared_strings(node) & names):
                branches[f"{path.relative_to(ROOT)}:{node.lineno}"] = sorted(hit)
    assert branches == {}


def test_every_reader_is_registered_and_provides_the_protocol() -> None:
    from tasks.io.readers import READERS, get_reader
    from tasks.io.readers.base import SourceReader

    modules_there = {
        p.stem
        for p in (ROOT / "tasks" / "io" / "readers").glob("*.py")
        if p.stem != "__init__" and not p.stem.endswith("base")  # base, arrays_base, ...
    }
    assert modules_there == set(READERS)
    for name in READERS:
        reader = get_reader(name)
        assert isinstance(reader, SourceReader) and reader.name == name
        assert type(reader).columns is not SourceReader.columns  # every reader describes
        if reader.kind == "table":
            assert type(reader).items is not SourceReader.items
        else:
            assert type(reader).blocks is not SourceReader.blocks


def test_no_function_is_over_80_lines() -> None:
    """Issue 43.5: a function a reader can hold. Modules are sized by their idea, not by a
    line cap (the 600-line cap this replaced shaped modules around it)."""
    long = {
        f"{p.relative_to(ROOT)}:{node.lineno} {node.name}": size
        for p in modules()
        for node in ast.walk(ast.parse(p.read_text()))
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
        and (size := node.end_lineno - node.lineno + 1) > MAX_FUNCTION_LINES
    }
    assert long == {}


VOCABULARY = ROOT / "ae_models" / "vocabulary.py"


def test_the_vocabulary_imports_nothing() -> None:
    """Issue 43.1: the ground floor every package imports, the served model included."""
    assert imported_roots(VOCABULARY) <= {"__future__"}


def _vocabulary_values() -> set[str]:
    import ae_models.vocabulary as vocabulary

    values = set()
    for name, value in vars(vocabulary).items():
        if name.isupper():
            values |= {value} if isinstance(value, str) else set(value)
    return values


def test_no_module_declares_a_word_of_the_vocabulary_again() -> None:
    """A module-level constant holding a vocabulary name (``ENTITY_ID = "entity_id"``,
    ``SPLITS = ("train", "val", "test")``) is a second declaration: import it instead."""
    words = _vocabulary_values()
    again = {}
    for path in modules():
        if path == VOCABULARY:
            continue
        for node in ast.parse(path.read_text()).body:
            if not isinstance(node, ast.Assign | ast.AnnAssign) or node.value is None:
                continue
            value = node.value
            leaves = value.elts if isinstance(value, ast.Tuple | ast.List | ast.Set) else [value]
            if all(isinstance(n, ast.Constant) and n.value in words for n in leaves):
                again[f"{path.relative_to(ROOT)}:{node.lineno}"] = [n.value for n in leaves]
    assert again == {}


def test_the_model_outputs_fill_the_feature_table() -> None:
    """The one builder of a row's outputs (ae_models) fills every model column of the table
    (feature_store), through the names both take from the vocabulary."""
    import numpy as np
    import pyarrow as pa

    from ae_models import outputs
    from feature_store import schema

    # the one builder of a row's outputs fills every model column of the table
    rows = outputs.RowOutputs(
        np.zeros((2, 3), np.float32),
        np.array([0.1, 0.9], np.float32),
        np.array([0.2, 0.8], np.float32),
        np.array([False, True]),
    )
    batch = schema.feature_batch(
        schema.feature_schema(3),
        pa.array(["a", "b"]),
        pa.array([0, 0], pa.timestamp("us", tz="UTC")),
        rows.columns(),
        model_name="m",
        model_version=1,
        run_id="r",
        scored_at=__import__("datetime").datetime(2026, 1, 1),
    )
    schema.validate_batch(batch, 3)
    assert batch.column("is_anomaly").to_pylist() == [False, True]
    assert batch.column("anomaly_score").to_pylist() == pytest.approx([0.2, 0.8])


def test_configuration_reference_is_generated_from_the_config() -> None:
    from tasks.config_reference import reference_markdown

    on_disk = (ROOT / "docs" / "configuration.md").read_text()
    assert on_disk == reference_markdown(), (
        "docs/configuration.md is stale: run `.venv/bin/python -m tasks.config_reference > "
        "docs/configuration.md`"
    )


def test_cli_flags_say_what_the_config_does() -> None:
    """Every run flag names a config key, and its type, help and default are the key's."""
    from aepipe.cli import RUN_FLAGS, _parser
    from tasks.config import PipelineConfig
    from tasks.config_reference import config_keys, describe

    run = next(
        a
        for a in _parser()._subparsers._group_actions[0].choices.values()
        if a.prog.endswith(" run")
    )
    actions = {a.option_strings[0]: a for a in run._actions if a.option_strings}
    keys = {d.key for d in config_keys()}
    defaults = PipelineConfig().model_dump()
    for flag, key in RUN_FLAGS.items():
        assert key in keys, f"{flag} sets {key!r}, which is not a config key"
        doc = describe(key)
        action = actions[flag]
        assert action.help == doc.help() and action.type is doc.python_type
        value = defaults
        for part in key.split("."):
            value = value[part]
        assert value == doc.default, f"{flag}: the config's default is {value!r}"
    assert "(default auto)" in actions["--batch-size"].help
    assert all(f in actions["--format"].help for f in ("csv", "parquet", "images", "idx", "npz"))


def test_every_test_the_reliability_table_names_exists() -> None:
    """docs/reliability.md maps each failure to the test that proves it: each named test is
    a real test function in the named file, so the table cannot point at nothing."""
    import re

    text = (ROOT / "docs" / "reliability.md").read_text()
    named = re.findall(r"`(tests/[\w/]+\.py)::(\w+)`", text)
    assert len(named) > 30
    missing = [
        f"{path}::{name}"
        for path, name in named
        if not re.search(rf"^def {name}\(", (ROOT / path).read_text(), re.MULTILINE)
    ]
    assert not missing, missing


def test_the_reliability_summary_counts_the_tables_rows() -> None:
    """The figures at the top of docs/reliability.md (faults survived, bad inputs tried)
    are the rows of the tables below it, so adding a case without counting it fails."""
    import re

    text = (ROOT / "docs" / "reliability.md").read_text()

    def rows(section: str) -> int:
        body = text.split(f"\n## {section}\n", 1)[1].split("\n## ", 1)[0]
        return sum(1 for line in body.splitlines() if line.startswith("| ")) - 1  # the header

    faults = int(re.search(r"\| Faults survived \| (\d+)", text).group(1))
    bad = int(re.search(r"\| Bad inputs tried \| (\d+)", text).group(1))
    assert (faults, bad) == (rows("Crashes and faults"), rows("Bad inputs"))


def _pytest(folder: Path, ci: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "CI": ci, "AEPIPE_STRICT_SKIPS": "", "PYTEST_ADDOPTS": ""}
    env.pop("PYTEST_XDIST_WORKER", None)
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "tests.conftest", "-q", str(folder)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_a_skip_not_listed_in_the_development_notes_fails_ci(tmp_path) -> None:
    """Issue 45: a test that skips on CI (a tmpfs refused, no pg_trgm) must be loud: with
    CI=true the session fails unless docs/development.md lists the skip and its reason."""
    from tests.conftest import allowed_skips, unlisted_skips

    allowed = allowed_skips()
    assert len(allowed) >= 5
    listed = ("tests/test_real_data.py::test_mnist", "shared data sets not found at /x")
    tmpfs = ("tests/reliability/test_disk_full.py::test_x", "cannot mount a 4m tmpfs here: x")
    assert unlisted_skips([listed, tmpfs], allowed) == [tmpfs]
    (tmp_path / "test_skips.py").write_text(
        "import pytest\n"
        "def test_listed():\n    pytest.skip('shared data sets not found at /nowhere')\n"
        "def test_unlisted():\n    pytest.skip('cannot mount a 4m tmpfs here: refused')\n"
    )
    strict = _pytest(tmp_path, "true")
    assert strict.returncode == 1, strict.stdout + strict.stderr
    assert "test_skips.py::test_unlisted: cannot mount a 4m tmpfs" in strict.stderr
    assert "test_listed" not in strict.stderr
    assert _pytest(tmp_path, "").returncode == 0


def test_no_private_name_is_imported_across_modules() -> None:
    """Issue 43.5: a module uses another's public names only (``from m import _x`` or a
    private module such as ``prefect.cli.deploy._triggers`` are reach-ins that break
    silently when the owner changes them)."""
    reach = {}
    for path in modules() + sorted((ROOT / "benchmarks").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.ImportFrom) or node.module is None:
                continue
            private = [
                a.name for a in node.names if a.name.startswith("_") and a.name != "__version__"
            ]
            hidden = [
                p for p in node.module.split(".") if p.startswith("_") and not p.startswith("__")
            ]
            if private or hidden:
                reach[f"{path.relative_to(ROOT)}:{node.lineno}"] = private + hidden
    assert reach == {}


def test_the_architecture_page_names_only_what_exists() -> None:
    """Issue 43.9: every file or folder docs/architecture.md names (in backticks) exists, and
    every package and every room of ae_models has its place on the page."""
    text = (ROOT / "docs" / "architecture.md").read_text()
    named = set(re.findall(r"`([a-z_]+(?:/[a-z_.]+)*(?:/|\.py|\.md|\.yaml))`", text))
    assert named, "no paths found on the page"
    files = {p.name for p in modules()}  # a bare name (`loop.py`) is a module of its room
    missing = sorted(p for p in named if not (ROOT / p).exists() and p not in files)
    assert missing == []
    rooms = [p.parent for p in (ROOT / "ae_models").glob("*/__init__.py")]
    wanted = [f"{pkg}/" for pkg in PACKAGES] + [f"{r.relative_to(ROOT)}/" for r in rooms]
    assert [w for w in wanted if f"`{w}`" not in text] == []


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def runtime_imports(path: Path, known: set[str]) -> set[str]:
    """The modules of ``known`` that ``path`` imports when it runs, at any depth of the file
    (an import inside a function included; one under ``if TYPE_CHECKING:``, for annotations
    only, not)."""
    tree = ast.parse(path.read_text())
    typing_only = {
        id(node)
        for branch in ast.walk(tree)
        if isinstance(branch, ast.If) and "TYPE_CHECKING" in ast.unparse(branch.test)
        for stmt in branch.body
        for node in ast.walk(stmt)
    }
    found = set()
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found |= {node.module} | {f"{node.module}.{a.name}" for a in node.names}
    return found & known


def test_no_module_imports_itself_back() -> None:
    """Issue 43.2: the modules import one another without circles (ingest <-> normalize,
    config <-> its reference <-> the readers were three), so each can be read, tested and
    changed from its imports down."""
    import graphlib

    paths = {_module_name(p): p for p in modules()}
    known = set(paths)
    graph = {
        name: {m for m in runtime_imports(p, known) if m != name and not name.startswith(m + ".")}
        for name, p in paths.items()
    }
    try:
        tuple(graphlib.TopologicalSorter(graph).static_order())
    except graphlib.CycleError as err:
        pytest.fail(f"an import circle: {' -> '.join(err.args[1])}")


def test_the_ingest_and_normalize_stages_speak_through_the_stage_references() -> None:
    """Issue 43.2: neither stage imports the other (the flow hands normalize's work to the
    ingest), and ``tasks.io``, the library under the stages, imports no stage."""
    known = {_module_name(p) for p in modules()}
    ingest = runtime_imports(ROOT / "tasks" / "ingest.py", known)
    normalize = runtime_imports(ROOT / "tasks" / "normalize.py", known)
    assert "tasks.normalize" not in ingest and "tasks.ingest" not in normalize
    floor = ("tasks.io", "tasks.config", "tasks.errors", "tasks.logs", "tasks.stages")
    library = {
        str(p.relative_to(ROOT)): sorted(
            m
            for m in runtime_imports(p, known)
            if m.startswith("tasks.") and not any(m == f or m.startswith(f"{f}.") for f in floor)
        )
        for p in (ROOT / "tasks" / "io").rglob("*.py")
    }
    assert {k: v for k, v in library.items() if v} == {}


def test_test_files_mirror_the_packages() -> None:
    """Issue 43.8: a test of a package's module lives in the package's folder under tests/,
    named after the module (``tests/ae_models/training/test_loop.py`` for
    ``ae_models/training/loop.py``; a suffix may say which part, as in
    ``test_ingest_partitions.py``), so a module's tests are found by its path."""
    tests = ROOT / "tests"
    stray = []
    for pkg in ("ae_models", "tasks", "feature_store", "stores"):
        for path in sorted((tests / pkg).rglob("test_*.py")):
            source = ROOT / path.parent.relative_to(tests)
            names = {p.stem for p in source.glob("*.py")} | {
                p.name for p in source.iterdir() if p.is_dir()
            }
            subject = path.stem.removeprefix("test_")
            if not source.is_dir() or not (
                subject == source.name or any(subject.startswith(n) for n in names - {"__init__"})
            ):
                stray.append(str(path.relative_to(ROOT)))
    assert stray == []
