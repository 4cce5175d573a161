"""Several models on one serving box: one per camera or product, each following its own alias.

``vigil serve --model NAME[@ALIAS]`` (repeatable; or ``models:`` in configs/serving.yaml) loads
``models:/NAME@ALIAS`` (default alias: ``follow.alias``) for each entry and serves it on routes
named after the model:

- ``GET /models/{name}``: that model's facts (as ``/model``) and its registry status.
- ``POST /models/{name}/score``, ``/score/heatmap``, ``/score/batch``, ``/score/clip``: the
  single-model routes' inputs and answers, scored by that model.

The single-model routes (``/score``, ...) serve the default model: ``--model-dir`` /
``--model-uri`` when given, else the first entry that loaded. ``/model`` keeps the default
model's fields and adds ``models``: every entry, serving or refused. Each model has its own
``ModelHolder`` and ``AliasFollower`` thread, so moving one alias swaps only that model, and a
registry webhook wakes the follower of the model it names. A model that cannot be loaded at
start-up is refused on its own (logged, listed with its reason, its routes answer 503); the
others serve. It is not retried until the service restarts.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fastapi import APIRouter, HTTPException, Query, Request
from fastapi.responses import Response

from vigil.redact import redact
from vigil.serving.follow import AliasFollower, ModelHolder

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModelRef:
    """One ``NAME[@ALIAS]`` entry of ``--model`` or ``models:``."""

    name: str
    alias: str

    @property
    def uri(self) -> str:
        return f"models:/{self.name}@{self.alias}"


def parse_model_refs(entries: Iterable[str], default_alias: str, source: str) -> list[ModelRef]:
    """``NAME[@ALIAS]`` strings -> refs; ``ValueError`` naming ``source`` and the bad entry (empty
    name or alias, a ``/`` in the name, or a name given twice: routes are named after models)."""
    refs: list[ModelRef] = []
    for entry in entries:
        name, _, alias = str(entry).strip().partition("@")
        alias = alias if "@" in str(entry) else default_alias
        if not name or not alias or "/" in name:
            raise ValueError(f"{source}: {entry!r} is not NAME or NAME@ALIAS")
        if any(ref.name == name for ref in refs):
            raise ValueError(f"{source}: model {name!r} is given twice (routes are named after it)")
        refs.append(ModelRef(name, alias))
    return refs


@dataclass
class ServedModel:
    """A model of the box: its holder once loaded, or the reason it was refused."""

    name: str
    alias: str | None
    holder: ModelHolder | None = None
    error: str | None = None  # why it was refused at start-up
    model_dir: Path | None = None  # where its follower installs new versions (None: memory)
    follower: AliasFollower | None = field(default=None, repr=False)

    def describe(self) -> dict[str, Any]:
        """Its ``/model`` entry: facts of the version served, or the refusal."""
        entry: dict[str, Any] = {"name": self.name, "route": f"/models/{self.name}"}
        if self.holder is None:
            return {**entry, "alias": self.alias, "status": "refused", "error": self.error}
        registry = self.holder.registry
        return {
            **entry,
            **self.holder.current.info.as_dict(),
            "name": self.name,
            "status": "serving",
            "following": self.follower is not None,
            "registry_reachable": registry.reachable,
            "refused_versions": registry.refused or {},
        }


class ModelSet:
    """The models of one service, in order; the first one loaded is the default."""

    def __init__(self, models: list[ServedModel]) -> None:
        self.models = {model.name: model for model in models}
        if len(self.models) < len(models):
            names = [model.name for model in models]
            twice = sorted({n for n in names if names.count(n) > 1})
            raise ValueError(f"model {', '.join(twice)} is served twice (routes are named after it)")
        loaded = [model for model in models if model.holder is not None]
        if not loaded:
            reasons = "; ".join(f"{m.name}: {m.error}" for m in models) or "no model given"
            raise ValueError(f"no model could be loaded ({reasons})")
        self.default = loaded[0]

    @classmethod
    def single(cls, holder: ModelHolder) -> ModelSet:
        """Today's one-model service: its model is also at ``/models/{its name}``."""
        info = holder.current.info if holder.current is not None else None  # None: app built
        return cls([ServedModel(info.name if info else "", info.alias if info else None, holder)])

    def get(self, name: str) -> ModelHolder:
        """The holder serving ``name``; 404 listing the served names, 503 for a refused one."""
        model = self.models.get(name)
        if model is None:
            raise HTTPException(404, f"no model {name!r} here; served: {', '.join(self.models)}")
        if model.holder is None:
            raise HTTPException(503, f"model {name!r} was refused at start-up: {model.error}")
        return model.holder

    def describe(self) -> list[dict[str, Any]]:
        return [model.describe() for model in self.models.values()]

    def followers(self) -> list[AliasFollower]:
        return [m.follower for m in self.models.values() if m.follower is not None]

    def start_following(self, *, interval_s: float, max_concurrent: int) -> list[AliasFollower]:
        """One follower thread per loaded registry model (local folders have nothing to follow);
        each checks once now (readiness; a newer version found here is swapped in)."""
        for model in self.models.values():
            if model.holder is None or model.holder.current.info.version == "local":
                continue
            info = model.holder.current.info
            model.follower = AliasFollower(
                model.holder,
                info.name,
                model.alias or info.alias or "champion",
                interval_s=interval_s,
                model_dir=model.model_dir,
                max_concurrent=max_concurrent,
            )
            model.follower.poll_once()
            model.follower.start()
        return self.followers()

    def stop_following(self) -> None:
        for follower in self.followers():
            follower.stop()


def load_model(ref: ModelRef, *, max_concurrent: int) -> ServedModel:
    """Pull and load ``ref``; a failure is logged and returned as a refused model."""
    from vigil.serving.loader import load_scorer

    try:
        scorer = load_scorer(ref.uri, max_concurrent=max_concurrent)
    except Exception as error:  # noqa: BLE001 - any failure refuses this model only
        reason = redact(f"{type(error).__name__}: {error}")
        log.error("refusing model %s: %s (the other models keep serving)", ref.uri, reason)
        return ServedModel(ref.name, ref.alias, error=reason)
    log.info(
        "loaded %s version %s (threshold %.6g) on /models/%s",
        ref.uri,
        scorer.info.version,
        scorer.info.threshold,
        ref.name,
    )
    return ServedModel(ref.name, ref.alias, ModelHolder(scorer))


def models_router(models: ModelSet, run: Callable, auth: Any, limits: Any) -> APIRouter:
    """``/models/{name}`` and its scoring routes; ``run``, ``auth`` and ``limits`` are the app's
    own (same threads, token and input limits as the single-model routes)."""
    from vigil.serving.app import _FILES_BODY, _IMAGE_BODY, _answer, _many_answer
    from vigil.serving.inputs import InputError, many_images, one_image_body
    from vigil.serving.loader import encode_png

    router = APIRouter(prefix="/models/{name}", tags=["models"])

    @router.get("")
    def model(name: str) -> dict[str, Any]:
        """One model's facts: version, alias, threshold, input size, metrics, registry status."""
        models.get(name)  # 404 / 503
        return models.models[name].describe()

    @router.post("/score", dependencies=[auth], openapi_extra=_IMAGE_BODY)
    async def score(name: str, request: Request, heatmap: bool = Query(False)) -> dict[str, Any]:
        """``/score``, by model ``name``."""
        started = _now()
        scorer = models.get(name).current
        data, filename = await one_image_body(request)
        result = (await run(scorer.score_images, [(data, filename)], heatmap, scorer.info))[0]
        return _answer(scorer, result, started, heatmap)

    @router.post(
        "/score/heatmap",
        dependencies=[auth],
        openapi_extra=_IMAGE_BODY,
        response_class=Response,
        responses={200: {"content": {"image/png": {}}}},
    )
    async def score_heatmap(name: str, request: Request) -> Response:
        """``/score/heatmap``, by model ``name``."""
        started = _now()
        scorer = models.get(name).current
        data, filename = await one_image_body(request)
        result = (await run(scorer.score_images, [(data, filename)], True, scorer.info))[0]
        answer = _answer(scorer, result, started, False)
        headers = {f"X-Vigil-{k.replace('_', '-')}": str(v) for k, v in answer.items()}
        return Response(encode_png(result.overlay), media_type="image/png", headers=headers)

    @router.post("/score/batch", dependencies=[auth], openapi_extra=_FILES_BODY)
    async def score_batch(
        name: str, request: Request, heatmap: bool = Query(False)
    ) -> dict[str, Any]:
        """``/score/batch``, by model ``name``."""
        started = _now()
        scorer = models.get(name).current
        images = await many_images(request, limits.max_batch, "batch")
        results = await run(scorer.score_images, images, heatmap, scorer.info)
        return _many_answer(scorer, results, started, heatmap)

    @router.post("/score/clip", dependencies=[auth], openapi_extra=_FILES_BODY)
    async def score_clip(
        name: str, request: Request, heatmap: bool = Query(False)
    ) -> dict[str, Any]:
        """``/score/clip``, by model ``name``."""
        started = _now()
        scorer = models.get(name).current
        images = await many_images(request, limits.max_clip_frames, "clip")
        if scorer.is_video and len(images) < 2:
            raise InputError(422, "a clip for a video model needs at least 2 frames")
        results = await run(scorer.score_clip, images, heatmap, scorer.info)
        return _many_answer(scorer, results, started, heatmap)

    return router


def _now() -> float:
    import time

    return time.perf_counter()
