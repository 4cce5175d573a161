"""Push-driven following: MLflow registry webhooks tell ``vigil serve`` that an alias moved.

MLflow (3.3 and later, SQL backend stores only) POSTs a JSON event to a registered webhook URL on
registry events. ``vigil serve`` accepts ``model_version_alias.created`` (what
``set_registered_model_alias`` fires, also when an alias moves) on ``POST /webhooks/mlflow``,
verifies MLflow's HMAC signature with the secret in ``VIGIL_WEBHOOK_SECRET``, and wakes the alias
follower (``AliasFollower.poll_now``), which resolves, pulls, verifies and swaps exactly as a
poll would. Polling stays the fallback for lost deliveries; the event is only a hint, never
trusted for the version: the follower reads the alias from the registry itself.

MLflow's signing scheme (``mlflow.webhooks.delivery``): headers ``X-MLflow-Delivery-Id``,
``X-MLflow-Timestamp`` (Unix seconds) and ``X-MLflow-Signature: v1,<base64>``, where the base64
is ``HMAC-SHA256(secret, "<delivery id>.<timestamp>.<raw body>")``. A delivery older (or newer)
than ``MAX_AGE_S`` is refused, so a captured request cannot be replayed later.

Register it (once, against the tracking server; the server needs the SQL backend, and to call an
address that is not public, ``MLFLOW_WEBHOOK_ALLOW_PRIVATE_IPS=true`` and, for plain HTTP,
``MLFLOW_WEBHOOK_ALLOWED_SCHEMES=http,https`` in its environment)::

    MlflowClient().create_webhook(name="vigil-serve", url="http://serve:8000/webhooks/mlflow",
                                  events=["model_version_alias.created"], secret=SECRET)

Answers: 202 when the follower was woken; 200 ``ignored`` (with the reason) for other events,
other models or aliases, or a service that does not follow; 401 for a missing, stale or wrong
signature; 422 for a body that is not a JSON event; 503 when ``VIGIL_WEBHOOK_SECRET`` is unset
(webhooks are off: an unsigned hook could make the service pull at anyone's request).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import os
import time
from typing import Any

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import JSONResponse

log = logging.getLogger(__name__)

SECRET_ENV = "VIGIL_WEBHOOK_SECRET"
WEBHOOK_PATH = "/webhooks/mlflow"
EVENT = ("model_version_alias", "created")
SIGNATURE_HEADER = "X-MLflow-Signature"
TIMESTAMP_HEADER = "X-MLflow-Timestamp"
DELIVERY_ID_HEADER = "X-MLflow-Delivery-Id"
SIGNATURE_VERSION = "v1"
MAX_AGE_S = 300


def sign(secret: str, delivery_id: str, timestamp: str, body: bytes) -> str:
    """MLflow's signature header value for ``body``: ``v1,<base64 HMAC-SHA256>``."""
    content = delivery_id.encode() + b"." + timestamp.encode() + b"." + body
    digest = hmac.new(secret.encode(), content, hashlib.sha256).digest()
    return f"{SIGNATURE_VERSION},{base64.b64encode(digest).decode('ascii')}"


def check_signature(
    secret: str, headers: Any, body: bytes, *, now: float | None = None, max_age_s: int = MAX_AGE_S
) -> None:
    """Raise ``HTTPException(401)`` naming what is wrong unless ``body`` is signed with ``secret``
    within ``max_age_s`` of ``now``."""
    delivery_id = headers.get(DELIVERY_ID_HEADER)
    timestamp = headers.get(TIMESTAMP_HEADER)
    signature = headers.get(SIGNATURE_HEADER)
    missing = [
        name
        for name, value in (
            (DELIVERY_ID_HEADER, delivery_id),
            (TIMESTAMP_HEADER, timestamp),
            (SIGNATURE_HEADER, signature),
        )
        if not value
    ]
    if missing:
        raise HTTPException(401, f"unsigned webhook: missing header(s) {', '.join(missing)}")
    try:
        age = (time.time() if now is None else now) - int(timestamp)
    except ValueError:
        raise HTTPException(401, f"{TIMESTAMP_HEADER} {timestamp!r} is not Unix seconds") from None
    if abs(age) > max_age_s:
        raise HTTPException(401, f"stale webhook: signed {age:.0f} s ago (limit {max_age_s} s)")
    expected = sign(secret, delivery_id, timestamp, body)
    if not hmac.compare_digest(expected.encode(), signature.encode()):
        raise HTTPException(401, "webhook signature does not match (wrong secret or altered body)")


def _ignored(reason: str) -> dict[str, str]:
    log.info("registry webhook ignored: %s", reason)
    return {"status": "ignored", "reason": reason}


def _followers(state: Any) -> list:
    """The service's alias followers: ``state.followers`` (one per model, ``vigil.serving.multi``)
    or the single ``state.follower``."""
    followers = getattr(state, "followers", None)
    if followers:
        return list(followers)
    follower = getattr(state, "follower", None)
    return [follower] if follower is not None else []


def webhook_router(secret: str | None = None) -> APIRouter:
    """The router serving ``POST /webhooks/mlflow``; ``secret`` defaults to ``$VIGIL_WEBHOOK_SECRET``
    (read once, when the app is built). The follower is ``request.app.state.follower`` (set by
    ``vigil serve`` when it follows an alias; absent: events are ignored), or, with several
    models, the one of ``request.app.state.followers`` following the event's model and alias."""
    secret = secret if secret is not None else os.environ.get(SECRET_ENV) or None
    router = APIRouter(tags=["registry"])

    @router.post(WEBHOOK_PATH, status_code=202)
    async def mlflow_webhook(request: Request) -> Any:
        """MLflow registry webhook: wakes the alias follower on ``model_version_alias.created``."""
        if secret is None:
            raise HTTPException(503, f"registry webhooks are off: set {SECRET_ENV} to enable them")
        body = await request.body()
        check_signature(secret, request.headers, body)
        try:
            event = json.loads(body)
            entity, action, data = event["entity"], event["action"], event.get("data") or {}
        except (ValueError, TypeError, KeyError):
            raise HTTPException(422, "not an MLflow webhook event (JSON with entity, action, data)")
        if (entity, action) != EVENT:
            return JSONResponse(_ignored(f"event {entity}.{action} is not followed"), 200)
        followers = _followers(request.app.state)
        if not followers:
            return JSONResponse(_ignored("this service does not follow an alias"), 200)
        name, alias = data.get("name"), data.get("alias")
        follower = next((f for f in followers if (f.name, f.alias) == (name, alias)), None)
        if follower is None:
            followed = ", ".join(f"{f.name}@{f.alias}" for f in followers)
            return JSONResponse(_ignored(f"{name}@{alias} is not {followed}"), 200)
        log.info("registry webhook: %s@%s -> version %s; checking now", name, alias,
                 data.get("version"))
        follower.poll_now()
        return {"status": "accepted", "model": name, "alias": alias, "version": data.get("version")}

    return router
