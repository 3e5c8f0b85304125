"""Deployments: create, list, show, update (rolling), delete, wait until ready, and calling
a deployment's endpoint (``/predict`` for people, OIP v2 ``/infer`` for tensors).

The control plane's answers are wire models (:mod:`nimbus.wire.deployments`); what a
replica answers (``/predict``, ``/infer``) is the inference server's protocol, not the REST
API, and comes back as plain data: a dict, or arrays for ``/infer``'s outputs."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import httpx

from nimbus.client.base import API, BaseClient
from nimbus.client.models import ModelRef, as_model_ref
from nimbus.errors import (
    InvalidInput,
    NimbusError,
    ServerError,
    Unavailable,
    error_from_response,
)
from nimbus.names import validate_name
from nimbus.wire.deployments import MAX_REPLICAS, RUNTIMES, Deployment, DeploymentList

if TYPE_CHECKING:
    import numpy as np

# The OIP v2 datatypes and numpy's names for them (numpy is imported by ``infer`` alone:
# the CLI's every start would pay for it otherwise).
_DTYPES = {
    "BOOL": "bool",
    "UINT8": "uint8",
    "UINT16": "uint16",
    "UINT32": "uint32",
    "UINT64": "uint64",
    "INT8": "int8",
    "INT16": "int16",
    "INT32": "int32",
    "INT64": "int64",
    "FP16": "float16",
    "FP32": "float32",
    "FP64": "float64",
}


class DeploymentFailed(NimbusError):
    """A deployment ended ``failed`` (or did not become ready in time) while waited on."""

    status = 503
    code = "deployment_failed"
    exit_code = 6


def _options(
    replicas: int | None,
    max_batch_size: int | None,
    max_delay_ms: float | None,
    runtime: str | None,
    public: bool | None,
    max_batch_rows: int | None = None,
    max_tensor_elements: int | None = None,
) -> dict[str, Any]:
    if replicas is not None and not 1 <= replicas <= MAX_REPLICAS:
        raise InvalidInput(f"invalid replicas {replicas}: between 1 and {MAX_REPLICAS}")
    if runtime is not None and runtime not in RUNTIMES:
        raise InvalidInput(f"invalid runtime {runtime!r}: use one of {', '.join(RUNTIMES)}")
    body = {
        "replicas": replicas,
        "max_batch_size": max_batch_size,
        "max_delay_ms": max_delay_ms,
        "runtime": runtime,
        "public": public,
        "max_batch_rows": max_batch_rows,
        "max_tensor_elements": max_tensor_elements,
    }
    return {k: v for k, v in body.items() if v is not None}


class DeploymentsMixin(BaseClient):
    """``/deployments`` and the endpoints they serve."""

    _poll_sleep: Callable[[float], None] = staticmethod(time.sleep)
    _poll_clock: Callable[[], float] = staticmethod(time.monotonic)

    def create_deployment(
        self,
        name: str,
        model: str | ModelRef,
        *,
        replicas: int | None = None,
        max_batch_size: int | None = None,
        max_delay_ms: float | None = None,
        runtime: str | None = None,
        public: bool | None = None,
        max_batch_rows: int | None = None,
        max_tensor_elements: int | None = None,
    ) -> Deployment:
        """Deploy ``model`` (``NAME:V``, ``NAME@ALIAS`` or ``NAME``) as ``name``; returns the
        deployment, usually still ``pending`` (see :meth:`wait_deployment`).
        ``max_batch_rows``/``max_tensor_elements`` cap one infer request (413 past them)."""
        validate_name(name, "deployment name")
        body = {
            "name": name,
            "model": str(as_model_ref(model)),
            **_options(
                replicas,
                max_batch_size,
                max_delay_ms,
                runtime,
                public,
                max_batch_rows,
                max_tensor_elements,
            ),
        }
        return self._call(Deployment, "POST", f"{API}/deployments", json=body)

    def list_deployments(self) -> list[Deployment]:
        """Every deployment of the caller's tenant."""
        return self._call(DeploymentList, "GET", f"{API}/deployments").deployments

    def get_deployment(self, name: str) -> Deployment:
        """One deployment: state, replicas, endpoint, model version, batching."""
        return self._call(Deployment, "GET", _path(name))

    def update_deployment(
        self,
        name: str,
        model: str | ModelRef | None = None,
        *,
        replicas: int | None = None,
        max_batch_size: int | None = None,
        max_delay_ms: float | None = None,
        runtime: str | None = None,
        public: bool | None = None,
        max_batch_rows: int | None = None,
        max_tensor_elements: int | None = None,
    ) -> Deployment:
        """A rolling update to ``model`` (an alias is resolved now), or a scale, or new
        batching settings; the endpoint stays."""
        body = _options(
            replicas,
            max_batch_size,
            max_delay_ms,
            runtime,
            public,
            max_batch_rows,
            max_tensor_elements,
        )
        if model is not None:
            body["model"] = str(as_model_ref(model))
        if not body:
            raise InvalidInput("nothing to update: give a model or a setting to change")
        return self._call(Deployment, "PATCH", _path(name), json=body)

    def rollback_deployment(self, name: str) -> Deployment:
        """Serve again the version served before the last model change (its
        ``previous_model_ref``); 409 when the model never changed. Replicas are replaced one
        at a time, as for an update."""
        return self._call(Deployment, "POST", _path(name) + "/rollback")

    def delete_deployment(self, name: str) -> Deployment:
        """Stop a deployment (its replicas drain and exit); returns it ``stopped``."""
        return self._call(Deployment, "DELETE", _path(name), timeout=self._no_read_deadline())

    def wait_deployment(
        self,
        name: str,
        *,
        timeout: float = 120.0,
        poll: float = 0.5,
        version: int | None = None,
    ) -> Deployment:
        """Poll until the deployment is ``ready`` with every replica ready (on ``version``
        when given); raises :class:`DeploymentFailed` if it fails or ``timeout`` passes."""
        start = self._poll_clock()
        interval = min(0.1, poll)
        while True:
            deployment = self.get_deployment(name)
            state = deployment.state
            if state == "failed":
                raise DeploymentFailed(f"deployment {name} failed to start")
            if state == "ready" and _replicas_ready(deployment, version):
                return deployment
            if self._poll_clock() - start >= timeout:
                raise DeploymentFailed(
                    f"deployment {name} was not ready within {timeout:g}s (state {state})"
                )
            self._poll_sleep(interval)
            interval = min(interval * 2, poll)

    # -- calling the endpoint ------------------------------------------------------------

    def predict(
        self,
        deployment: str,
        file: str | os.PathLike[str] | None = None,
        *,
        text: str | None = None,
        data: bytes | None = None,
    ) -> dict[str, Any]:
        """One prediction from a deployment's ``/predict``: an image ``file`` (or its bytes as
        ``data``), or ``text``. Returns ``{"label", "probabilities": {class: p}}``."""
        body = _example(file, text, None, data, "predict on")
        url = f"{self._endpoint(deployment)}/v2/models/{deployment}/predict"
        if isinstance(body, bytes):
            return self._call_endpoint(url, content=body, headers=_OCTETS)
        return self._call_endpoint(url, json=body)

    def explain(
        self,
        deployment: str,
        file: str | os.PathLike[str] | None = None,
        *,
        text: str | None = None,
        features: Sequence[float] | Mapping[str, float] | None = None,
        data: bytes | None = None,
        overlay: bool = False,
        **options: Any,
    ) -> dict[str, Any]:
        """The prediction for one example and why: a deployment's ``/explain`` on an image
        ``file`` (or its bytes as ``data``), a ``text`` or a row of ``features``. Options:
        ``method`` (images: integrated_gradients, occlusion, smoothgrad; text:
        integrated_gradients, occlusion; tabular: shapley, integrated_gradients), ``target``
        (a class; default the predicted one), ``steps``, ``baseline``, ``window``,
        ``stride``, ``samples``; ``overlay``: an image's heat map as a base64 PNG
        (``overlay_png``). Returns
        ``{"label", "probabilities", "target", "method", ...}`` with ``attributions`` (an
        image's, its shape), ``words`` ([word, score] pairs) or ``features`` ({name: score}),
        and ``completeness_delta`` for Integrated Gradients."""
        body = _example(file, text, features, data, "explain")
        given = {k: v for k, v in options.items() if v is not None}
        url = f"{self._endpoint(deployment)}/v2/models/{deployment}/explain"
        if isinstance(body, bytes):
            if overlay:
                given["overlay"] = "true"
            query = "&".join(f"{k}={quote(str(v), safe='')}" for k, v in given.items())
            return self._call_endpoint(f"{url}?{query}", content=body, headers=_OCTETS)
        return self._call_endpoint(url, json={**body, "parameters": given})

    def infer(
        self, deployment: str, x: np.ndarray, *, input_name: str | None = None
    ) -> dict[str, np.ndarray]:
        """An OIP v2 ``/infer`` call with one input tensor ``x`` (its name from the model's
        metadata unless given); returns each output as an array of its shape."""
        import numpy as np

        endpoint = self._endpoint(deployment)
        base = f"{endpoint}/v2/models/{deployment}"
        if input_name is None:
            inputs = self._call_endpoint(base, method="GET").get("inputs") or [{}]
            input_name = str(inputs[0].get("name", "input"))
        datatype = next((k for k, v in _DTYPES.items() if np.dtype(v) == x.dtype), None)
        if datatype is None:
            raise InvalidInput(f"unsupported tensor type {x.dtype}")
        body = {
            "inputs": [
                {
                    "name": input_name,
                    "datatype": datatype,
                    "shape": list(x.shape),
                    "data": x.reshape(-1).tolist(),
                }
            ]
        }
        answer = self._call_endpoint(f"{base}/infer", json=body)
        outputs: dict[str, np.ndarray] = {}
        for out in answer.get("outputs") or []:
            dtype = _DTYPES.get(str(out.get("datatype")), "object")
            outputs[str(out["name"])] = np.asarray(out["data"], dtype=dtype).reshape(out["shape"])
        return outputs

    def _endpoint(self, deployment: str) -> str:
        shown = self.get_deployment(deployment)
        if not shown.endpoint:
            raise Unavailable(f"deployment {deployment} has no endpoint (state {shown.state})")
        return shown.endpoint.rstrip("/")

    def _call_endpoint(
        self,
        url: str,
        *,
        method: str = "POST",
        json: Any = None,
        content: bytes | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> dict[str, Any]:
        """A request to a deployment's endpoint (another host and port, same token)."""
        try:
            response = self._http.request(
                method, url, json=json, content=content, headers=self._headers(True, headers)
            )
        except httpx.TransportError as exc:
            raise Unavailable(f"cannot reach the deployment at {url}: {exc}") from None
        if response.is_error:
            raise _endpoint_error(response)
        try:
            return dict(response.json())
        except ValueError:
            raise ServerError(f"the deployment at {url} answered something not JSON") from None


def _endpoint_error(response: httpx.Response) -> NimbusError:
    """The error an endpoint reported: OIP's ``{"error": "message"}`` (or the control
    plane's ``{"error": {"code", "message"}}``), as the matching :class:`NimbusError`."""
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict) and isinstance(body.get("error"), str):
        body = {"error": {"code": "", "message": body["error"]}}  # classified by status
    return error_from_response(response.status_code, body)


def _path(name: str) -> str:
    return f"{API}/deployments/{validate_name(name, 'deployment name')}"


def _replicas_ready(deployment: Deployment, version: int | None) -> bool:
    replicas = deployment.replicas
    if len(replicas) < max(deployment.desired_replicas, 1):
        return False
    return all(
        r.state == "ready" and (version is None or r.model_version == version) for r in replicas
    )


_OCTETS = {"Content-Type": "application/octet-stream"}


def _example(
    file: str | os.PathLike[str] | None,
    text: str | None,
    features: Sequence[float] | Mapping[str, float] | None,
    data: bytes | None,
    what: str,
) -> bytes | dict[str, Any]:
    """What ``/predict`` and ``/explain`` take for one example: an image's bytes, or a JSON
    object with its text or its features."""
    given = [x for x in (file, text, features, data) if x is not None]
    if len(given) != 1:
        raise InvalidInput(f"give exactly one of a file, a text or features to {what}")
    if text is not None:
        return {"text": text}
    if features is not None:
        return {"features": dict(features) if isinstance(features, Mapping) else list(features)}
    if file is not None:
        path = Path(file)
        try:
            return path.read_bytes()
        except FileNotFoundError:
            raise InvalidInput(f"no such file: {path}") from None
        except OSError as exc:
            raise InvalidInput(f"cannot read {path}: {exc.strerror or exc}") from None
    assert data is not None
    return data
