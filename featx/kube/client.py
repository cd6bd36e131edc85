"""The only module of featx that talks to the Kubernetes API: a thin adapter over the official
client with the few calls the controller makes (``VERBS``, which the chart's Role grants and
nothing more). Objects go in and come out as plain dicts (the API's camelCase JSON form), so the
rest of featx never sees the client's model classes.

Every request has a deadline (``Timeouts``) and urllib3 retries nothing: the controller's next
pass is the retry, so an unreachable or silent API server costs one pass at most
``connect + read`` seconds per call and one log line, never a silent hang.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from featx.errors import TransientError, UsageError

#: (API group, resource, verb) the controller uses; helm/featx/templates/rbac.yaml grants exactly these.
VERBS = frozenset({("batch", "jobs", "list"), ("batch", "jobs", "create"), ("batch", "jobs", "delete"),
                   ("batch", "jobs", "patch"), ("", "pods", "list"), ("events.k8s.io", "events", "create")})
SERVICE_ACCOUNT_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")


@dataclass(frozen=True)
class Timeouts:
    """Seconds to connect and to wait for a response, per API request (``_request_timeout``)."""

    connect: float = 5.0
    read: float = 30.0

    def pair(self) -> tuple[float, float]:
        return (self.connect, self.read)


def in_cluster_namespace() -> str | None:
    try:
        return SERVICE_ACCOUNT_NAMESPACE.read_text().strip() or None
    except OSError:
        return None


class KubeClient:
    """Jobs and Pods of one namespace. ``api_client`` is a ``kubernetes.client.ApiClient`` whose
    credentials are used (in a client of its own, see ``_own_client``); ``parallel`` is the most
    requests in flight at once (the controller's write workers)."""

    def __init__(self, api_client: Any, namespace: str, timeouts: Timeouts = Timeouts(), parallel: int = 1):
        from kubernetes import client

        self.api_client = _own_client(api_client, parallel)
        self.namespace = namespace
        self.timeouts = timeouts
        self._batch = client.BatchV1Api(self.api_client)
        self._core = client.CoreV1Api(self.api_client)

    @classmethod
    def connect(cls, namespace: str | None = None, kubeconfig: str | None = None, context: str | None = None,
                timeouts: Timeouts = Timeouts(), parallel: int = 1) -> "KubeClient":
        """In-cluster credentials when running in a pod (and no kubeconfig is given), else the
        kubeconfig (``--kubeconfig``, ``$KUBECONFIG`` or ~/.kube/config)."""
        from kubernetes import config
        from kubernetes.config.config_exception import ConfigException

        try:
            if kubeconfig is None and context is None and in_cluster_namespace() is not None:
                config.load_incluster_config()
                from kubernetes import client

                api = client.ApiClient()
            else:
                api = config.new_client_from_config(config_file=kubeconfig, context=context, persist_config=False)
        except (ConfigException, OSError, TypeError) as e:
            raise UsageError(f"cannot load Kubernetes credentials ({e}); pass --kubeconfig FILE, set KUBECONFIG, "
                             "or run inside the cluster") from e
        ns = namespace or in_cluster_namespace() or _kubeconfig_namespace(kubeconfig, context) or "default"
        return cls(api, ns, timeouts, parallel)

    def _plain(self, obj: Any) -> dict[str, Any]:
        return self.api_client.sanitize_for_serialization(obj)

    def _call(self, what: str, fn, *args, **kwargs):
        from kubernetes.client.rest import ApiException
        from urllib3.exceptions import HTTPError

        try:
            return fn(*args, _request_timeout=self.timeouts.pair(), **kwargs)
        except ApiException as e:
            if e.status in (401, 403):
                raise UsageError(f"{what}: the API server refused ({e.status} {e.reason}); the ServiceAccount or "
                                 "kubeconfig user needs the chart's Role (jobs: list/create/delete/patch, pods: list, events: create) in "
                                 f"namespace {self.namespace}") from e
            if e.status == 0:  # the client's wrapping of a TLS failure: no answer from the server
                raise TransientError(f"{what}: cannot reach the Kubernetes API ({' '.join(str(e.reason).split())}); "
                                     "the next pass retries") from e
            raise
        except (HTTPError, OSError) as e:
            raise TransientError(f"{what}: cannot reach the Kubernetes API ({type(e).__name__}: {e}); "
                                 "the next pass retries") from e

    # -- the calls ----------------------------------------------------------------------------

    def read_run_config(self, configmap: str) -> str:
        """``run.yaml`` of the chart's ConfigMap: for ``featx reconcile --configmap`` run from outside
        the cluster (the controller mounts the file instead, so this verb is not in its Role)."""
        from kubernetes.client.rest import ApiException

        try:
            cm = self._call("read configmap", self._core.read_namespaced_config_map, configmap, self.namespace)
        except ApiException as e:
            if e.status == 404:
                raise UsageError(f"no ConfigMap {configmap} in namespace {self.namespace}; it is "
                                 "`<release>-featx-run` after `helm install` (kubectl get configmaps)") from e
            raise TransientError(f"read configmap {configmap}: {e.status} {e.reason}") from e
        data = cm.data or {}
        if "run.yaml" not in data:
            raise UsageError(f"ConfigMap {configmap} has no run.yaml key; is it the featx chart's?")
        return data["run.yaml"]

    def _list(self, what: str, fn, selector: str) -> list[dict[str, Any]]:
        from kubernetes.client.rest import ApiException

        try:
            # the raw JSON: already the plain camelCase form, and several times faster than the
            # client's model classes for a few hundred Jobs
            res = self._call(what, fn, self.namespace, label_selector=selector, _preload_content=False)
        except ApiException as e:
            raise TransientError(f"{what}: {e.status} {e.reason}; the next pass retries") from e
        return list(json.loads(res.data).get("items") or [])

    def list_jobs(self, selector: str) -> list[dict[str, Any]]:
        return self._list("list jobs", self._batch.list_namespaced_job, selector)

    def list_pods(self, selector: str) -> list[dict[str, Any]]:
        return self._list("list pods", self._core.list_namespaced_pod, selector)

    def create_job(self, manifest: dict[str, Any]) -> str | None:
        """Create a Job; its uid, or None if one of that name exists already (another reconciler made it)."""
        from kubernetes.client.rest import ApiException

        try:
            # the raw JSON response: parsing the created Job into model classes costs more client
            # CPU than the request itself
            res = self._call("create job", self._batch.create_namespaced_job, self.namespace, manifest,
                             _preload_content=False)
            return str((json.loads(res.data).get("metadata") or {}).get("uid") or "")
        except ApiException as e:
            if e.status == 409:
                return None
            if e.status == 422:
                raise UsageError(f"the API server rejected Job {manifest['metadata']['name']}: {_message(e)}; "
                                 "check the chart values") from e
            raise TransientError(f"create job {manifest['metadata']['name']}: {e.status} {e.reason}") from e

    def delete_job(self, name: str) -> bool:
        """Delete a Job and (in the background) its pods; False if it is already gone."""
        from kubernetes.client.rest import ApiException

        try:
            self._call("delete job", self._batch.delete_namespaced_job, name, self.namespace,
                       propagation_policy="Background")
            return True
        except ApiException as e:
            if e.status == 404:
                return False
            raise TransientError(f"delete job {name}: {e.status} {e.reason}") from e

    def create_event(self, event: dict[str, Any]) -> None:
        """Write an Event (events.k8s.io/v1, ``featx.kube.events``)."""
        from kubernetes import client
        from kubernetes.client.rest import ApiException

        try:
            self._call("create event", client.EventsV1Api(self.api_client).create_namespaced_event, self.namespace,
                       event, _preload_content=False).data
        except ApiException as e:
            raise TransientError(f"create event: {e.status} {_message(e)}") from e

    def keep_job(self, name: str, reason: str) -> bool:
        """Keep a given-up model's last Job until its failure record is cleared: remove its
        ttlSecondsAfterFinished and mark it (``A_GAVE_UP``); False if it is already gone."""
        from kubernetes.client.rest import ApiException

        from featx.kube.jobs import A_GAVE_UP

        patch = {"metadata": {"annotations": {A_GAVE_UP: reason[:1000]}}, "spec": {"ttlSecondsAfterFinished": None}}
        try:
            self._call("patch job", self._batch.patch_namespaced_job, name, self.namespace, patch,
                       _preload_content=False).data
            return True
        except ApiException as e:
            if e.status == 404:
                return False
            raise TransientError(f"patch job {name}: {e.status} {e.reason}") from e


def _own_client(api_client: Any, parallel: int) -> Any:
    """A client over ``api_client``'s configuration with no urllib3 retries (each one would also
    print a warning line) and a connection pool for ``parallel`` requests (a full pool drops
    connections and warns)."""
    from kubernetes import client

    config = copy.deepcopy(api_client.configuration)
    config.retries = False
    config.connection_pool_maxsize = max(parallel, config.connection_pool_maxsize or 1)
    return client.ApiClient(config)


def _message(e: Any) -> str:
    try:
        return json.loads(e.body).get("message", e.reason)
    except (TypeError, ValueError):
        return str(e.reason)


def _kubeconfig_namespace(kubeconfig: str | None, context: str | None) -> str | None:
    try:
        from kubernetes import config

        contexts, active = config.list_kube_config_contexts(config_file=kubeconfig)
        ctx = next((c for c in contexts if c["name"] == context), active) if context else active
        return (ctx or {}).get("context", {}).get("namespace")
    except Exception:  # noqa: BLE001 - only a default
        return None
