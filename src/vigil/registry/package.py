"""The model package: one MLflow pyfunc holding preprocessing, weights, post-processing, threshold.

Serving cannot drift from evaluation because the package carries everything evaluation used:

```
<package>/                       what `mlflow.artifacts.download_artifacts("models:/NAME/V")` gives
  MLmodel  requirements.txt  python_env.yaml  conda.yaml  input_example.json ...
  pyfunc_model.py                the model, logged "from code" (no pickle): vigil.registry.pyfunc_model
  code/vigil/                    the vigil source tree the package was built with (see below)
  artifacts/model/
    model.json                   network spec (vigil.models.model_spec), read by load_trained
    weights.safetensors          network weights (safetensors: no pickle)
    threshold.json               the evaluate stage's calibration, verbatim
    reference.png                the prepared alignment reference frame (only when prep aligns)
    package.json                 prep, post-processing config, threshold, pixel threshold, hashes
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
  to frame and the score smoothed by ``vigil.evaluation.scoring.score_video``; each request
  starts from a fresh state.
- **Alignment reference:** when ``prep.align`` is not ``none``, the prepare stage registered every
  frame to one reference frame (``manifest.json`` ``reference_index``). The package carries that
  frame as ``reference.png`` (lossless) and the pyfunc and ``vigil.serving.loader`` align every
  input to it, exactly as the evaluated data was aligned. Without it each request would be
  aligned to its own first frame, and a still image would not be aligned at all.
- **Checksum:** ``package_checksum`` hashes every file of the package (relative path + sha256),
  except ``__pycache__`` folders and ``*.pyc`` files that Python writes when the bundled code is
  imported, and MLflow's top-level ``registered_model_meta`` (rewritten at every registration).
  Registration records it as the ``vigil.package_sha256`` version tag; pulls verify it.
- ``mlflow models serve -m models:/NAME@champion --env-manager local`` execs ``uvicorn`` by name:
  run it with the venv's ``bin`` on PATH.
"""

from __future__ import annotations

import base64
import hashlib
import json
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from vigil.config import EvaluateConfig, ImagePrep

PACKAGE_FORMAT = 1
ARTIFACT_KEY = "model"  # context.artifacts["model"] -> artifacts/model/
SPEC_FILE = "model.json"
WEIGHTS_FILE = "weights.safetensors"
THRESHOLD_FILE = "threshold.json"
PACKAGE_FILE = "package.json"
REFERENCE_FILE = "reference.png"
CHECKSUM_TAG = "vigil.package_sha256"
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
_SKIPPED_IN_CHECKSUM = ("__pycache__",)
# MLflow rewrites this file in the model's artifact folder at each registration (name, version).
_MLFLOW_REGISTRATION_FILE = "registered_model_meta"


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


# --- hashing --------------------------------------------------------------------------------


def file_sha256(path: Path | str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def package_files(package_dir: Path | str) -> list[Path]:
    """The files the checksum covers, sorted by relative path (bytecode caches excluded)."""
    root = Path(package_dir)
    if not root.is_dir():
        raise PackageError(f"{root}: package folder not found")
    files = []
    for path in root.rglob("*"):
        rel = path.relative_to(root)
        if any(part in _SKIPPED_IN_CHECKSUM for part in rel.parts) or path.suffix == ".pyc":
            continue
        if rel.as_posix() == _MLFLOW_REGISTRATION_FILE:
            continue
        if path.is_file():
            files.append(rel)
    return sorted(files, key=lambda rel: rel.as_posix())


def package_checksum(package_dir: Path | str) -> str:
    """sha256 over ``<relative path>\\0<file sha256>\\n`` for every package file, sorted by path.

    A renamed, added, removed or modified file changes it; file times and folder order do not.
    """
    root = Path(package_dir)
    files = package_files(root)
    if not files:
        raise PackageError(f"{root}: package folder is empty")
    digest = hashlib.sha256()
    for rel in files:
        digest.update(f"{rel.as_posix()}\0{file_sha256(root / rel)}\n".encode())
    return digest.hexdigest()


# --- reading a package ----------------------------------------------------------------------


def find_artifacts(package_dir: Path | str) -> Path:
    """The folder holding ``package.json`` + ``model.json`` + weights, given a package root,
    its ``artifacts/`` folder, or that folder itself."""
    root = Path(package_dir)
    for candidate in (root, root / "artifacts" / ARTIFACT_KEY):
        if (candidate / PACKAGE_FILE).is_file():
            return candidate
    found = sorted(root.rglob(PACKAGE_FILE), key=lambda p: len(p.parts))
    if not found:
        raise PackageError(f"{root}: no {PACKAGE_FILE} inside: not a vigil model package")
    return found[0].parent


def read_package_metadata(package_dir: Path | str) -> dict[str, Any]:
    """``package.json`` plus ``spec`` (model.json) of a package (root or artifacts folder).

    Keys: format, dataset, modality, spec, prep, postprocess, threshold, pixel_threshold,
    calibration (threshold.json verbatim), weights_sha256, reference (file name or None).
    """
    root = find_artifacts(package_dir)
    meta = _read_json(root / PACKAGE_FILE)
    if int(meta.get("format", 0)) > PACKAGE_FORMAT:
        raise PackageError(
            f"{root / PACKAGE_FILE}: package format {meta.get('format')} is newer than this "
            f"vigil understands ({PACKAGE_FORMAT})"
        )
    meta["spec"] = _read_json(root / SPEC_FILE)
    return meta


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise PackageError(f"{path}: missing")
    try:
        value = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise PackageError(f"{path}: not valid JSON: {error}") from None
    if not isinstance(value, dict):
        raise PackageError(f"{path}: expected a JSON object, got {type(value).__name__}")
    return value


def read_reference(package_dir: Path | str, prep: ImagePrep) -> np.ndarray | None:
    """The alignment reference frame of a package: uint8 (h, w, C) as prepared (RGB or gray),
    or None when the package has none (``prep.align`` is ``none``, or an older package)."""
    import cv2

    root = find_artifacts(package_dir)
    meta = _read_json(root / PACKAGE_FILE)
    name = meta.get("reference")
    if not name:
        return None
    path = root / name
    if not path.is_file():
        raise PackageError(f"{path}: missing (package.json names it as the alignment reference)")
    image = cv2.imdecode(np.fromfile(path, dtype=np.uint8), cv2.IMREAD_UNCHANGED)
    if image is None:
        raise PackageError(f"{path}: not a decodable PNG")
    frame = cv2.cvtColor(image, cv2.COLOR_BGR2RGB) if image.ndim == 3 else image[:, :, None]
    expected = (*prep.size, prep.channels)
    if frame.shape != expected:
        raise PackageError(
            f"{path}: reference frame of shape {frame.shape}, but prep expects {expected} "
            "(size, channels)"
        )
    return np.ascontiguousarray(frame)


# --- building a package ---------------------------------------------------------------------


def write_reference(dest: Path, reference: np.ndarray, prep: ImagePrep) -> str:
    """Write the prepared reference frame uint8 (h, w, C) into ``dest`` as lossless PNG."""
    frame = np.asarray(reference)
    expected = (*prep.size, prep.channels)
    if frame.dtype != np.uint8 or frame.shape != expected:
        raise PackageError(
            f"alignment reference: expected a prepared uint8 frame of shape {expected}, got "
            f"{frame.dtype} {frame.shape}"
        )
    (dest / REFERENCE_FILE).write_bytes(frames_to_png(frame[None])[0])
    return REFERENCE_FILE


def read_threshold(path: Path | str) -> tuple[float, float | None, dict[str, Any]]:
    """(image threshold, pixel threshold or None, whole file) from the evaluate stage's file."""
    path = Path(path)
    if not path.is_file():
        raise PackageError(
            f"{path}: missing; the evaluate stage writes the calibrated threshold there "
            "(run `dvc repro evaluate` first)"
        )
    data = _read_json(path)
    if "threshold" not in data:
        raise PackageError(f"{path}: no 'threshold' field (image score threshold)")
    try:
        threshold = float(data["threshold"])
    except (TypeError, ValueError):
        raise PackageError(
            f"{path}: 'threshold' must be a number, got {data['threshold']!r}"
        ) from None
    if not np.isfinite(threshold):
        raise PackageError(f"{path}: 'threshold' is not finite ({threshold})")
    pixel = data.get("pixel_threshold")
    return threshold, (None if pixel is None else float(pixel)), data


def stage_artifacts(
    model_dir: Path | str,
    dest: Path | str,
    *,
    prep: ImagePrep,
    postprocess: EvaluateConfig,
    threshold_file: Path | str | None = None,
    dataset: str | None = None,
    reference: np.ndarray | None = None,
) -> Path:
    """Copy weights, spec and threshold into ``dest`` and write ``package.json`` beside them.

    ``model_dir`` is the train stage's output (``weights.safetensors`` + ``model.json``);
    ``threshold_file`` defaults to ``<model_dir>/threshold.json`` (the evaluate stage's);
    ``reference``: the prepared alignment reference frame uint8 (h, w, C), required when
    ``prep.align`` is not ``none`` (ignored otherwise).
    """
    model_dir, dest = Path(model_dir), Path(dest)
    for name in (SPEC_FILE, WEIGHTS_FILE):
        if not (model_dir / name).is_file():
            raise PackageError(f"{model_dir / name}: missing; run the train stage first")
    threshold_file = Path(threshold_file or model_dir / THRESHOLD_FILE)
    threshold, pixel_threshold, calibration = read_threshold(threshold_file)
    spec = _read_json(model_dir / SPEC_FILE)
    dest.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(model_dir / SPEC_FILE, dest / SPEC_FILE)
    shutil.copyfile(model_dir / WEIGHTS_FILE, dest / WEIGHTS_FILE)
    shutil.copyfile(threshold_file, dest / THRESHOLD_FILE)
    reference_name = None
    if prep.align != "none":
        if reference is None:
            raise PackageError(
                f"prep.align is {prep.align!r} but no alignment reference frame was given: "
                "serving could not align inputs as the prepared data was aligned (pass the "
                "prepared dataset's reference frame, manifest.json reference_index)"
            )
        reference_name = write_reference(dest, reference, prep)
    meta = {
        "format": PACKAGE_FORMAT,
        "dataset": dataset,
        "modality": spec.get("modality", "image"),
        "prep": prep.model_dump(mode="json"),
        "postprocess": postprocess.model_dump(mode="json"),
        "threshold": threshold,
        "pixel_threshold": pixel_threshold,
        "calibration": calibration,
        "weights_sha256": file_sha256(dest / WEIGHTS_FILE),
        "reference": reference_name,
    }
    (dest / PACKAGE_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
    return dest


def stage_code(dest: Path | str) -> Path:
    """A clean copy of the vigil source tree (no bytecode) at ``<dest>/vigil`` for code_paths."""
    import vigil

    source = Path(vigil.__file__).resolve().parent
    target = Path(dest) / "vigil"
    shutil.copytree(source, target, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    return target


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


def default_example(prep: ImagePrep) -> list[bytes]:
    """One mid-grey PNG at the model's input size: an input example when no data is at hand."""
    height, width = prep.size
    shape = (height, width) if prep.channels == 1 else (height, width, 3)
    return [encode_png(np.full(shape, 128, dtype=np.uint8))]


def save_package(
    path: Path | str,
    model_dir: Path | str,
    *,
    prep: ImagePrep,
    postprocess: EvaluateConfig,
    threshold_file: Path | str | None = None,
    dataset: str | None = None,
    example_images: Sequence[bytes] | None = None,
    reference: np.ndarray | None = None,
) -> Path:
    """Write the pyfunc package to a local folder ``path`` (must not exist). Returns ``path``."""
    import mlflow

    with tempfile.TemporaryDirectory(prefix="vigil-package-") as tmp:
        kwargs = _model_kwargs(
            Path(tmp), model_dir, prep, postprocess, threshold_file, dataset, example_images,
            reference,
        )
        mlflow.pyfunc.save_model(path=str(path), **kwargs)
    return Path(path)


def log_package(
    model_dir: Path | str,
    *,
    prep: ImagePrep,
    postprocess: EvaluateConfig,
    threshold_file: Path | str | None = None,
    dataset: str | None = None,
    example_images: Sequence[bytes] | None = None,
    run_id: str | None = None,
    name: str = "model",
    reference: np.ndarray | None = None,
) -> LoggedPackage:
    """Log the package to MLflow (into ``run_id`` when given, else the active run or none).

    Downloads the logged files back and checksums them, so the checksum describes what the
    artifact store holds, not what was meant to be uploaded.
    """
    import mlflow

    with tempfile.TemporaryDirectory(prefix="vigil-package-") as tmp:
        kwargs = _model_kwargs(
            Path(tmp), model_dir, prep, postprocess, threshold_file, dataset, example_images,
            reference,
        )
        if run_id is not None and (
            mlflow.active_run() is None or mlflow.active_run().info.run_id != run_id
        ):
            with mlflow.start_run(run_id=run_id):
                info = mlflow.pyfunc.log_model(name=name, **kwargs)
        else:
            info = mlflow.pyfunc.log_model(name=name, **kwargs)
        meta = _read_json(Path(kwargs["artifacts"][ARTIFACT_KEY]) / PACKAGE_FILE)
    checksum = checksum_of_uri(info.model_uri)
    return LoggedPackage(
        model_uri=info.model_uri,
        model_id=getattr(info, "model_id", None),
        run_id=info.run_id,
        checksum=checksum,
        threshold=float(meta["threshold"]),
        weights_sha256=meta["weights_sha256"],
    )


def checksum_of_uri(uri: str) -> str:
    """Download the model at ``uri`` (``models:/...``, ``runs:/...``) to a temp dir; checksum it."""
    import mlflow

    with tempfile.TemporaryDirectory(prefix="vigil-verify-") as tmp:
        local = mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=tmp)
        return package_checksum(local)


def _model_kwargs(
    tmp: Path,
    model_dir: Path | str,
    prep: ImagePrep,
    postprocess: EvaluateConfig,
    threshold_file: Path | str | None,
    dataset: str | None,
    example_images: Sequence[bytes] | None,
    reference: np.ndarray | None = None,
) -> dict[str, Any]:
    """Arguments shared by save_model and log_model; stages files under ``tmp``."""
    artifacts = stage_artifacts(
        model_dir,
        tmp / ARTIFACT_KEY,
        prep=prep,
        postprocess=postprocess,
        threshold_file=threshold_file,
        dataset=dataset,
        reference=reference,
    )
    code = stage_code(tmp / "code")
    examples = list(example_images or default_example(prep))[:1]
    return {
        "python_model": str(Path(__file__).with_name("pyfunc_model.py")),
        "artifacts": {ARTIFACT_KEY: str(artifacts)},
        "code_paths": [str(code)],
        "pip_requirements": pip_requirements(),
        "signature": model_signature(),
        "input_example": images_frame(examples),
    }
