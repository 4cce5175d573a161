"""The real `dvc repro prepare` (generate + extra + prepare) in a temporary git repo on tiny
params: first run builds everything, a second run skips everything, a prepare param change reruns
only the prepare stages, code changes rerun only the stages that import that code, a dataset with
no data/extra folder reproduces, and data ingested into one dataset reruns that dataset's prepare
only.

Also checks, without running DVC, that each stage's code deps in dvc.yaml are exactly the import
closure of its ``pipelines/<stage>.py`` (lazy imports inside functions included): nothing it
imports is missing (DVC would skip a stage whose code changed) and nothing it does not import is
listed (a change to serving/ must not rerun training)."""

from __future__ import annotations

import ast
import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from vigil.data.prepared import PreparedDataset

REPO = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent

TINY_GENERATE = {
    "capsules": {"image_size": 32, "n_train": 6, "n_test_good": 2, "n_test_per_defect": 2},
    "print": {
        "frame_size": 32,
        "fps": 30,
        "n_train_videos": 2,
        "n_test_videos": 2,
        "frames_per_video": 40,
        "anomalies_per_test_video": 1,
    },
}


def _run(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {
        **os.environ,
        "PATH": f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        "DVC_NO_ANALYTICS": "1",
        "GIT_TERMINAL_PROMPT": "0",
    }
    result = subprocess.run(
        args, check=False, cwd=cwd, env=env, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, f"{' '.join(args)} failed:\n{result.stdout}\n{result.stderr}"
    return result


def _tiny_params(path: Path, channels: int) -> None:
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["generate"].update({k: {**params["generate"][k], **v} for k, v in TINY_GENERATE.items()})
    params["prepare"]["image"].update({"size": [16, 16], "channels": channels})
    params["prepare"]["video"].update({"size": [16, 16]})
    params["data"]["datasets"]["capsules"].pop("prepare", None)  # the global 16x16 applies
    path.write_text(yaml.safe_dump(params, sort_keys=False))


@pytest.fixture()
def dvc_repo(tmp_path: Path) -> Path:
    repo = tmp_path / "repo"
    repo.mkdir()
    shutil.copy(REPO / "dvc.yaml", repo / "dvc.yaml")
    shutil.copytree(
        REPO / "pipelines", repo / "pipelines", ignore=shutil.ignore_patterns("__pycache__")
    )
    shutil.copytree(
        REPO / "src" / "vigil", repo / "src" / "vigil", ignore=shutil.ignore_patterns("__pycache__")
    )
    shutil.copytree(REPO / "configs", repo / "configs")
    (repo / "data" / "extra").mkdir(parents=True)
    shutil.copy(REPO / "data" / "extra" / "README.md", repo / "data" / "extra" / "README.md")
    _tiny_params(repo / "params.yaml", channels=3)
    _run(["git", "init", "-q"], repo)
    _run([str(VENV_BIN / "dvc"), "init", "-q"], repo)
    shutil.copy(REPO / ".dvc" / "config", repo / ".dvc" / "config")
    _run(["git", "add", "-A"], repo)
    _run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "init"], repo)
    return repo


def _ran(output: str) -> set[str]:
    return {line.split("'")[1] for line in output.splitlines() if line.startswith("Running stage")}


def test_dvc_repro_generate_prepare_then_skip_then_rerun_prepare_only(dvc_repo: Path):
    dvc = str(VENV_BIN / "dvc")
    first = _run([dvc, "repro", "prepare"], dvc_repo)
    assert _ran(first.stdout) == {
        "generate",
        "extra@capsules",
        "extra@print",
        "prepare@capsules",
        "prepare@print",
    }, first.stdout
    capsules = PreparedDataset.load(dvc_repo / "data" / "prepared" / "capsules")
    assert capsules.frames.shape[1:] == (16, 16, 3)
    assert PreparedDataset.load(dvc_repo / "data" / "prepared" / "print").modality == "video"
    assert (dvc_repo / "dvc.lock").is_file()

    second = _run([dvc, "repro", "prepare"], dvc_repo)
    assert _ran(second.stdout) == set(), second.stdout

    _tiny_params(dvc_repo / "params.yaml", channels=1)
    third = _run([dvc, "repro", "prepare"], dvc_repo)
    assert _ran(third.stdout) == {"prepare@capsules", "prepare@print"}, third.stdout
    assert PreparedDataset.load(dvc_repo / "data" / "prepared" / "capsules").channels == 1
    assert "Data and pipelines are up to date" in _run([dvc, "status", "prepare"], dvc_repo).stdout


def test_code_change_reruns_only_the_stages_that_import_it(dvc_repo: Path):
    dvc = str(VENV_BIN / "dvc")
    _run([dvc, "repro", "prepare"], dvc_repo)
    with (dvc_repo / "src" / "vigil" / "serving" / "app.py").open("a") as handle:
        handle.write("\n# touched by the test\n")
    assert "Data and pipelines are up to date" in _run([dvc, "status", "prepare"], dvc_repo).stdout
    with (dvc_repo / "src" / "vigil" / "data" / "splits.py").open("a") as handle:
        handle.write("\n# touched by the test\n")
    status = _run([dvc, "status", "prepare"], dvc_repo).stdout
    assert "prepare@capsules" in status and "prepare@print" in status, status
    assert "generate:" not in status, status


def test_ingest_into_one_dataset_reruns_only_its_prepare(dvc_repo: Path):
    """A dataset added with two lines of params.yaml needs no data/extra/<d> folder; a `dvc add`ed
    ingest into capsules reruns the cheap extra@* stages, and of the prepare stages only
    prepare@capsules: the other datasets' fingerprints are byte-identical, so DVC skips them."""
    dvc = str(VENV_BIN / "dvc")
    params = yaml.safe_load((dvc_repo / "params.yaml").read_text())
    params["data"]["datasets"]["mine"] = {"source": "data/raw/capsules", "modality": "image"}
    (dvc_repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    first = _run([dvc, "repro", "prepare"], dvc_repo)
    assert {"extra@mine", "prepare@mine"} <= _ran(first.stdout), first.stdout
    assert not (dvc_repo / "data" / "extra" / "mine").exists()
    fingerprints = dvc_repo / "data" / "fingerprints"
    assert json.loads((fingerprints / "extra-mine.json").read_text()) == {
        "dataset": "mine",
        "folder": "data/extra/mine",
        "files": 0,
        "sha256": hashlib.sha256().hexdigest(),
    }
    print_before = (fingerprints / "extra-print.json").read_bytes()

    extra = dvc_repo / "data" / "extra" / "capsules"  # what `vigil ingest` does: move, dvc add
    extra.mkdir()
    good = sorted((dvc_repo / "data" / "raw" / "capsules" / "train" / "good").glob("*.png"))
    shutil.copy(good[0], extra / "new-0.png")
    _run([dvc, "add", "-q", "data/extra/capsules"], dvc_repo)
    # before the splitters run, no prepare stage is out of date; after, only capsules' is
    assert "up to date" in _run([dvc, "status", "prepare"], dvc_repo).stdout
    status = _run([dvc, "status", "--with-deps", "prepare"], dvc_repo).stdout
    assert "extra@capsules" in status and "prepare@" not in status, status

    second = _run([dvc, "repro", "prepare"], dvc_repo)
    assert _ran(second.stdout) == {
        "extra@capsules",
        "extra@print",
        "extra@mine",
        "prepare@capsules",
    }, second.stdout
    for skipped in ("prepare@print", "prepare@mine"):
        assert f"Stage '{skipped}' didn't change, skipping" in second.stdout, second.stdout
    assert (fingerprints / "extra-print.json").read_bytes() == print_before
    assert json.loads((fingerprints / "extra-capsules.json").read_text())["files"] == 1
    capsules = PreparedDataset.load(dvc_repo / "data" / "prepared" / "capsules")
    assert "extra/new-0.png" in {item.origin for item in capsules.items}  # read, as training data
    assert "Data and pipelines are up to date" in _run([dvc, "status", "prepare"], dvc_repo).stdout


# --- code deps of each stage == the import closure of its entry ------------------------------

SRC = REPO / "src"
# Stages whose output embeds the whole package source, not only what they import:
# register logs the model with code_paths=[a copy of src/vigil] (vigil.registry.package).
WHOLE_PACKAGE = {"register": "src/vigil"}


def _module_file(name: str) -> Path | None:
    """The source file of a ``vigil...`` module name, or None when it is not a module."""
    path = SRC.joinpath(*name.split("."))
    if (path / "__init__.py").is_file():
        return path / "__init__.py"
    return path.with_suffix(".py") if path.with_suffix(".py").is_file() else None


def _imported_modules(path: Path, module: str) -> set[str]:
    """``vigil`` modules imported anywhere in ``path`` (top level and inside functions),
    with their parent packages (importing ``a.b.c`` runs ``a`` and ``a.b`` too)."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parts, base] if base else parts)
            names |= {base, *(f"{base}.{alias.name}" for alias in node.names)}
    found = set()
    for name in names:
        parts = name.split(".")
        if parts[0] != "vigil":
            continue
        found |= {
            ".".join(parts[:i]) for i in range(1, len(parts) + 1)
            if _module_file(".".join(parts[:i]))
        }
    return found


def _family_modules(networks: bool) -> list[str]:
    """Modules the family registry imports by name: each family folder's ``__init__`` (its
    record and config: what params validation needs) and, with ``networks``, every module under
    ``vigil.models`` (``Family.build``/``plan`` import a family's network and training code)."""
    root = SRC / "vigil" / "models"
    paths = root.rglob("*.py") if networks else root.glob("*/__init__.py")
    return [
        ".".join(path.relative_to(SRC).with_suffix("").parts).removesuffix(".__init__")
        for path in paths if "__pycache__" not in path.parts
    ]


def import_closure(entry: Path) -> set[Path]:
    """Source files of every vigil module ``entry`` can import, transitively, relative to REPO."""
    seen: set[str] = set()
    todo = list(_imported_modules(entry, "__main__"))
    while todo:
        name = todo.pop()
        if name not in seen:
            seen.add(name)
            todo += _imported_modules(_module_file(name), name)
            if name == "vigil.models.registry":
                todo += _family_modules(networks=False)
            if name == "vigil.models.spec":  # builds networks: any family's code
                todo += _family_modules(networks=True)
    return {_module_file(name).relative_to(REPO) for name in seen}


def _stage_deps() -> dict[str, list[str]]:
    """{stage: its deps} from dvc.yaml (foreach stages: the ``do`` template)."""
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    return {name: stage.get("do", stage)["deps"] for name, stage in stages.items()}


def _sources(dep: str) -> set[Path]:
    """Python files a dep path stands for (a file, or every file under a folder)."""
    path = REPO / dep
    files = [path] if path.is_file() else path.rglob("*.py")
    return {f.relative_to(REPO) for f in files if "__pycache__" not in f.parts}


@pytest.mark.parametrize("stage", sorted(_stage_deps()))
def test_stage_code_deps_are_exactly_its_import_closure(stage: str):
    all_deps = _stage_deps()[stage]
    assert f"pipelines/{stage}.py" in all_deps, f"dvc.yaml stage {stage!r}: entry not a dep"
    deps = [d for d in all_deps if d.startswith("src/")]
    if stage in WHOLE_PACKAGE:
        assert deps == [WHOLE_PACKAGE[stage]], f"{stage}: expected only {WHOLE_PACKAGE[stage]}"
        return
    needed = import_closure(REPO / "pipelines" / f"{stage}.py")
    listed = set().union(*(_sources(d) for d in deps))
    missing = sorted(str(f) for f in needed - listed)
    assert not missing, f"dvc.yaml stage {stage!r} lacks deps it imports: {missing}"
    extra = sorted(str(f) for f in listed - needed)
    assert not extra, f"dvc.yaml stage {stage!r} lists code it never imports: {extra}"
