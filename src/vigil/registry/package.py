"""The model package: one MLflow pyfunc holding preprocessing, weights, post-processing, threshold.

Serving cannot drift from evaluation because the package carries everything evaluation used:

```
<package>/                       what `mlflow.artifacts.download_artifacts("models:/NAME/V")` gives
  MLmodel  requirements.txt  python_env.yaml  conda.yaml  input_example.json ...
  pyfunc_model.py                the model, logged "from code" (no pickle): vigil.registry.pyfunc_model
  code/vigil/                    the vigil source tree the package was built with (see below)
  artifacts/model/               the evaluate stage's detector folder, verbatim (vigil.detector):
    detector.json                spec (family, knobs, prep), post-processing, thresholds, hashes
    weights.safetensors          network weights (+ the alignment reference frame when prep aligns)
```

Design decisions:

- **Models from code.** ``python_model`` is the path of ``pyfunc_model.py``; MLflow 3.17 refuses
  to unpickle a cloudpickled model by default, and nothing here needs pickle.
- **The vigil source travels in ``code/``** (``code_paths``), so ``mlflow models serve`` or
  ``mlflow.pyfunc.load_model`` in a process without vigil installed runs exactly the
  preprocessing and scoring code the package was evaluated with; only the third-party
  ``pip_requirements`` (pinned to the versions installed at build time) are needed. In a process
  that has already imported vigil (the training workspace, ``vigil serve``), Python keeps the
  imported modules, so the installed vigil is used there.
- **Inputs:** a DataFrame with one ``image`` column of encoded image bytes (PNG/JPEG; base64 in
  JSON requests, as MLflow's scoring server expects for a ``binary`` column). In-process callers
  with decoded frames skip encoding: ``loaded.unwrap_python_model().score_decoded(frames)``.
- **Outputs:** a DataFrame with ``score`` (float), ``is_anomaly`` (bool, ``score >= threshold``)
  and, with ``params={"return_heatmap": True}``, ``heatmap`` (base64 PNG of the colorized
  overlay, BGR as OpenCV writes it).
- **Video models** score the rows of one request as one clip, in order, state carried from frame
  to frame and the score smoothed by ``Detector.score_clips`` (as a live stream); each request
  starts from a fresh state.
- **One detector, stored once:** the package's artifacts are the ``Detector`` folder the
  evaluate stage wrote; the pyfunc, ``vigil serve`` and ``vigil watch`` load it with
  ``Detector.load`` and score through it, so they cannot drift from evaluation. Packages of an
  older vigil (``package.json``) are refused with the command that re-registers them.
- **Checksum and signature:** ``vigil.registry.integrity``: every file of the logged package is
  hashed (no exclusions); registration records it as the ``vigil.package_sha256`` version tag,
  the gate's pass (or a forced promotion) is signed with ``VIGIL_SIGNING_KEY`` when one is set,
  and every loader verifies both before anything in the package is imported.
- ``mlflow models serve -m models:/NAME@champion --env-manager local`` execs ``uvicorn`` by name:
  run it with the venv's ``bin`` on PATH.
"""

from __future__ import annotations

import base64
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from vigil.registry.integrity import file_sha256, package_checksum


ARTIFACT_KEY = "model"  # context.artifacts["model"] -> artifacts/model/
DETECTOR_FILE = "detector.json"
WEIGHTS_FILE = "weights.safetensors"
LEGACY_FILE = "package.json"  # packages of vigil before the detector: refused, re-register
INPUT_COLUMN = "image"
HEATMAP_PARAM = "return_heatmap"

# Third-party distributions the package imports at run time (vigil itself travels in code/).
RUNTIME_DISTRIBUTIONS = (
    "mlflow",
    "torch",
    "numpy",
    "pandas",
    "opencv-python-headless",
    "safetensors",
    "pydantic",
    "pyyaml",
    "scipy",
    "scikit-learn",
)


class PackageError(ValueError):
    """A package cannot be built or read; the message names the file or field."""


@dataclass(frozen=True)
class LoggedPackage:
    """A package logged to MLflow: where it is and what its files hash to."""

    model_uri: str  # models:/<model_id>, the source to register
    model_id: str | None
    run_id: str | None
    checksum: str  # package_checksum of the logged files
    threshold: float
    weights_sha256: str


# --- reading a package ----------------------------------------------------------------------


def find_artifacts(package_dir: Path | str) -> Path:
    """The detector folder inside a package root, its ``artifacts/`` folder, or that folder."""
    root = Path(package_dir)
    for candidate in (root, root / "artifacts" / ARTIFACT_KEY):
        if (candidate / DETECTOR_FILE).is_file() or (candidate / LEGACY_FILE).is_file():
            return candidate
    found = sorted(root.rglob(DETECTOR_FILE), key=lambda p: len(p.parts))
    if not found:
        raise PackageError(f"{root}: no {DETECTOR_FILE} inside: not a vigil model package")
    return found[0].parent


def read_detector_record(package_dir: Path | str):
    """The package's ``DetectorRecord`` (no weights loaded)."""
    from vigil.detector.record import DetectorError, read_record

    try:
        return read_record(find_artifacts(package_dir))
    except DetectorError as error:
        raise PackageError(str(error)) from None


def load_detector(package_dir: Path | str):
    """The package's ``Detector`` (weights from safetensors: nothing is unpickled)."""
    from vigil.detector import Detector
    from vigil.detector.record import DetectorError

    try:
        return Detector.load(find_artifacts(package_dir))
    except DetectorError as error:
        raise PackageError(str(error)) from None


# --- building a package ---------------------------------------------------------------------


def stage_artifacts(detector_dir: Path | str, dest: Path | str) -> Path:
    """Copy the calibrated detector folder (``detector.json`` + weights) into ``dest``."""
    detector_dir, dest = Path(detector_dir), Path(dest)
    record = read_detector_record(detector_dir)
    if record.threshold is None:
        raise PackageError(
            f"{detector_dir / DETECTOR_FILE}: no calibrated threshold; run the evaluate stage"
        )
    dest.mkdir(parents=True, exist_ok=True)
    for name in (DETECTOR_FILE, WEIGHTS_FILE):
        if not (detector_dir / name).is_file():
            raise PackageError(f"{detector_dir / name}: missing; run the evaluate stage")
        shutil.copyfile(detector_dir / name, dest / name)
    return dest


def stage_code(dest: Path | str, family_module: str | None = None) -> list[Path]:
    """Clean copies (no bytecode) of the vigil source tree at ``<dest>/vigil`` and, for a model
    family that lives outside vigil (``family_module``), of its top-level package: the
    package's code_paths."""
    import importlib

    import vigil

    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    targets = []
    top_levels = {"vigil"}
    if family_module:
        top_levels.add(family_module.split(".", 1)[0])
    for name in sorted(top_levels):
        module = vigil if name == "vigil" else importlib.import_module(name)
        source = Path(module.__file__).resolve()
        target = Path(dest) / (name if source.name == "__init__.py" else source.name)
        if source.name == "__init__.py":
            shutil.copytree(source.parent, target, ignore=ignore)
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, target)
        targets.append(target)
    return targets


def pip_requirements(distributions: Sequence[str] = RUNTIME_DISTRIBUTIONS) -> list[str]:
    """``name==version`` of each installed runtime distribution (local tags like +cpu dropped,
    so the requirement resolves on PyPI)."""
    pins = []
    for name in distributions:
        try:
            version = metadata.version(name)
        except metadata.PackageNotFoundError:
            raise PackageError(f"runtime dependency {name!r} is not installed") from None
        pins.append(f"{name}=={version.split('+', 1)[0]}")
    return pins


def model_signature():
    """Input: column ``image`` (binary); params: ``return_heatmap`` (bool, default False)."""
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, ParamSchema, ParamSpec, Schema

    return ModelSignature(
        inputs=Schema([ColSpec("binary", INPUT_COLUMN)]),
        outputs=Schema(
            [
                ColSpec("double", "score"),
                ColSpec("boolean", "is_anomaly"),
                ColSpec("string", "heatmap", required=False),
            ]
        ),
        params=ParamSchema([ParamSpec(HEATMAP_PARAM, "boolean", False)]),
    )


def encode_png(image: np.ndarray) -> bytes:
    """uint8 gray (H, W[, 1]) or BGR (H, W, 3) -> PNG bytes (lossless)."""
    import cv2

    ok, buffer = cv2.imencode(".png", np.ascontiguousarray(image))
    if not ok:
        raise PackageError(f"cannot PNG-encode an image of shape {image.shape}")
    return buffer.tobytes()


def frames_to_png(frames: np.ndarray) -> list[bytes]:
    """Prepared frames uint8 (N, H, W, C) in RGB or gray -> PNG bytes (BGR on disk, as usual)."""
    import cv2

    out = []
    for frame in np.asarray(frames):
        if frame.ndim == 3 and frame.shape[2] == 3:
            frame = cv2.cvtColor(frame, cv2.COLOR_RGB2BGR)
        out.append(encode_png(frame))
    return out


def images_frame(images: Sequence[bytes]):
    """Encoded images -> the package's input DataFrame (one ``image`` column of bytes)."""
    import pandas as pd

    return pd.DataFrame({INPUT_COLUMN: [bytes(image) for image in images]})


def invocation_payload(images: Sequence[bytes], *, return_heatmap: bool = False) -> dict:
    """JSON body for ``POST /invocations`` of ``mlflow models serve`` (binary -> base64)."""
    rows = [[base64.b64encode(image).decode("ascii")] for image in images]
    payload: dict[str, Any] = {"dataframe_split": {"columns": [INPUT_COLUMN], "data": rows}}
    if return_heatmap:
        payload["params"] = {HEATMAP_PARAM: True}
    return payload


def default_example(prep) -> list[bytes]:
    """One mid-grey PNG at the model's input size: an input example when no data is at hand."""
    height, width = prep.size
    shape = (height, width) if prep.channels == 1 else (height, width, 3)
    return [encode_png(np.full(shape, 128, dtype=np.uint8))]


def save_package(
    path: Path | str,
    detector_dir: Path | str,
    *,
    example_images: Sequence[bytes] | None = None,
) -> Path:
    """Write the pyfunc package to a local folder ``path`` (must not exist). Returns ``path``."""
    import mlflow

    with tempfile.TemporaryDirectory(prefix="vigil-package-") as tmp:
        kwargs = _model_kwargs(Path(tmp), detector_dir, example_images)
        mlflow.pyfunc.save_model(path=str(path), **kwargs)
    return Path(path)


def log_package(
    detector_dir: Path | str,
    *,
    example_images: Sequence[bytes] | None = None,
    run_id: str | None = None,
    name: str = "model",
) -> LoggedPackage:
    """Log the package of the detector in ``detector_dir`` to MLflow (into ``run_id`` when
    given, else the active run or none).

    Downloads the logged files back and checksums them, so the checksum describes what the
    artifact store holds, not what was meant to be uploaded.
    """
    import mlflow

    with tempfile.TemporaryDirectory(prefix="vigil-package-") as tmp:
        kwargs = _model_kwargs(Path(tmp), detector_dir, example_images)
        if run_id is not None and (
            mlflow.active_run() is None or mlflow.active_run().info.run_id != run_id
        ):
            with mlflow.start_run(run_id=run_id):
                info = mlflow.pyfunc.log_model(name=name, **kwargs)
        else:
            info = mlflow.pyfunc.log_model(name=name, **kwargs)
        artifacts = Path(kwargs["artifacts"][ARTIFACT_KEY])
        record = read_detector_record(artifacts)
        weights = file_sha256(artifacts / WEIGHTS_FILE)
    checksum = checksum_of_uri(info.model_uri)
    return LoggedPackage(
        model_uri=info.model_uri,
        model_id=getattr(info, "model_id", None),
        run_id=info.run_id,
        checksum=checksum,
        threshold=float(record.threshold),
        weights_sha256=weights,
    )


def checksum_of_uri(uri: str) -> str:
    """Download the model at ``uri`` (``models:/...``, ``runs:/...``) to a temp dir; checksum it."""
    import mlflow

    with tempfile.TemporaryDirectory(prefix="vigil-verify-") as tmp:
        local = mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=tmp)
        return package_checksum(local)


def _model_kwargs(
    tmp: Path, detector_dir: Path | str, example_images: Sequence[bytes] | None
) -> dict[str, Any]:
    """Arguments shared by save_model and log_model; stages files under ``tmp``."""
    from vigil.models.registry import get_family

    artifacts = stage_artifacts(detector_dir, tmp / ARTIFACT_KEY)
    record = read_detector_record(artifacts)
    family_module = get_family(record.family).module
    code = stage_code(tmp / "code", None if family_module.startswith("vigil.") else family_module)
    examples = list(example_images or default_example(record.prep))[:1]
    return {
        "python_model": str(Path(__file__).with_name("pyfunc_model.py")),
        "artifacts": {ARTIFACT_KEY: str(artifacts)},
        "code_paths": [str(c) for c in code],
        "pip_requirements": pip_requirements(),
        "signature": model_signature(),
        "input_example": images_frame(examples),
    }
