"""The chart's values, read in Python: what ``featx render`` and ``featx reconcile -f`` use when
there is no ConfigMap to read. Same inputs as ``helm template``: the chart's ``values.yaml``,
``-f`` files merged on top, then ``--set`` assignments; checked against the chart's own
``values.schema.json`` and cross-value rules (the ``featx.validateValues`` template), and turned
into the ConfigMap's ``run.yaml`` by ``run_config`` — the structure ``templates/_helpers.tpl``
(``featx.runConfig``) renders. ``tests/test_kube_chart.py`` checks both agree on every case.

No helm binary is needed; nothing here talks to a cluster.
"""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from typing import Any, Iterable

import yaml

from featx.errors import UsageError

CHART_DIR = Path(__file__).resolve().parents[2] / "helm" / "featx"


def chart_dir(path: str | Path | None = None) -> Path:
    d = Path(path) if path else CHART_DIR
    if not (d / "Chart.yaml").is_file():
        raise UsageError(f"no Helm chart at {d} (Chart.yaml missing); pass --chart PATH to the featx chart "
                         "(helm/featx in the featx repository)")
    return d


def chart_meta(chart: Path) -> dict[str, Any]:
    return yaml.safe_load((chart / "Chart.yaml").read_text())


# -- merging --------------------------------------------------------------------------------


def merge(base: Any, override: Any) -> Any:
    """Helm's coalescing: maps merge key by key, anything else is replaced; ``null`` removes a key."""
    if not isinstance(base, dict) or not isinstance(override, dict):
        return copy.deepcopy(override)
    out = copy.deepcopy(base)
    for k, v in override.items():
        if v is None:
            out.pop(k, None)
        elif k in out and isinstance(out[k], dict) and isinstance(v, dict):
            out[k] = merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def _split(text: str, sep: str) -> list[str]:
    """Split on ``sep`` outside ``{...}`` and not escaped with a backslash."""
    parts, cur, depth, esc = [], "", 0, False
    for ch in text:
        if esc:
            cur += ch
            esc = False
        elif ch == "\\":
            esc = True
        elif ch == "{":
            depth += 1
            cur += ch
        elif ch == "}":
            depth -= 1
            cur += ch
        elif ch == sep and depth == 0:
            parts.append(cur)
            cur = ""
        else:
            cur += ch
    parts.append(cur)
    return parts


def _typed(raw: str) -> Any:
    """``--set`` typing as helm does it: null, true/false, integers; everything else a string."""
    if raw == "null":
        return None
    if raw in ("true", "false"):
        return raw == "true"
    if re.fullmatch(r"-?(0|[1-9][0-9]*)", raw):
        return int(raw)
    return raw


_PATH_PART = re.compile(r"([^.\[\]]+)|\[(\d+)\]")


def _path(key: str) -> list[str | int]:
    parts: list[str | int] = []
    pos = 0
    for m in _PATH_PART.finditer(key):
        gap = key[pos:m.start()]
        if gap not in ("", "."):
            raise UsageError(f"--set {key}: cannot parse the key; write it as a.b.c or list[0].key")
        parts.append(m.group(1) if m.group(1) is not None else int(m.group(2)))
        pos = m.end()
    if not parts or key[pos:]:
        raise UsageError(f"--set {key}: cannot parse the key; write it as a.b.c or list[0].key")
    return parts


def apply_set(values: dict[str, Any], expr: str) -> dict[str, Any]:
    """Apply one ``--set`` argument (``a.b=1,c[0].d=x,e={p,q}``) like ``helm --set``."""
    values = copy.deepcopy(values)
    for assignment in _split(expr, ","):
        if "=" not in assignment:
            raise UsageError(f"--set {assignment}: expected key=value")
        key, raw = assignment.split("=", 1)
        if raw.startswith("{") and raw.endswith("}"):
            inner = raw[1:-1]
            value: Any = [_typed(v) for v in _split(inner, ",")] if inner else []
        else:
            value = _typed(raw)
        parts = _path(key.strip())
        node: Any = values
        for i, part in enumerate(parts):
            last = i == len(parts) - 1
            nxt: Any = None if last else ([] if isinstance(parts[i + 1], int) else {})
            if isinstance(part, int):
                if not isinstance(node, list):
                    raise UsageError(f"--set {key}: {parts[i - 1]} is not a list")
                while len(node) <= part:
                    node.append(None)
                if last:
                    node[part] = value
                else:
                    if not isinstance(node[part], (dict, list)):
                        node[part] = nxt
                    node = node[part]
            else:
                if not isinstance(node, dict):
                    raise UsageError(f"--set {key}: {part} is inside a value that is not a map")
                if last:
                    node[part] = value  # null stays: coalescing with the chart's values removes the key
                else:
                    if not isinstance(node.get(part), (dict, list)):
                        node[part] = nxt
                    node = node[part]
    return values


def merge_maps(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """Helm's merging of ``-f`` files: maps merge key by key, anything else (lists, null) replaces."""
    out = copy.deepcopy(base)
    for k, v in override.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = merge_maps(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def load_values(chart: str | Path | None = None, files: Iterable[str | Path] = (), sets: Iterable[str] = ()) -> dict[str, Any]:
    """Values as helm computes them, then checked: the ``-f`` files merged in order, the ``--set``
    assignments applied to that (so ``--set list[0].key=...`` edits a list only when a file gave
    one, and otherwise makes a new list, as in helm), then the chart's values.yaml underneath
    (user lists replace the chart's, ``null`` removes a key)."""
    d = chart_dir(chart)
    user: dict[str, Any] = {}
    for f in files:
        p = Path(f)
        if not p.is_file():
            raise UsageError(f"values file {f} does not exist; check the -f path")
        doc = yaml.safe_load(p.read_text()) or {}
        if not isinstance(doc, dict):
            raise UsageError(f"{f}: a values file must be a YAML map of keys")
        user = merge_maps(user, doc)
    for s in sets:
        user = apply_set(user, s)
    values = merge(yaml.safe_load((d / "values.yaml").read_text()) or {}, user)
    check(values, d)
    return values


# -- checking -------------------------------------------------------------------------------

_TYPES = {"string": str, "integer": int, "number": (int, float), "boolean": bool, "object": dict,
          "array": list, "null": type(None)}
SUPPORTED_KEYWORDS = {"$schema", "title", "description", "type", "enum", "minimum", "maximum", "minLength",
                      "maxLength", "pattern", "required", "properties", "additionalProperties", "items",
                      "minItems", "maxItems", "anyOf", "oneOf", "$ref", "definitions"}


def _is(value: Any, t: str) -> bool:
    if t in ("integer", "number") and isinstance(value, bool):
        return False
    if t == "integer" and isinstance(value, float):
        return value.is_integer()
    return isinstance(value, _TYPES[t])


def schema_errors(value: Any, schema: dict[str, Any], root: dict[str, Any] | None = None, where: str = "") -> list[str]:
    """Errors of ``value`` against the subset of JSON Schema the chart's schema uses
    (``SUPPORTED_KEYWORDS``), each as ``path: problem``."""
    root = root or schema
    if "$ref" in schema:
        ref = schema["$ref"]
        if not ref.startswith("#/"):
            raise ValueError(f"unsupported $ref {ref}")
        target: Any = root
        for part in ref[2:].split("/"):
            target = target[part]
        schema = {**target, **{k: v for k, v in schema.items() if k != "$ref"}}
    at = where or "(root)"
    errors: list[str] = []
    for key in ("anyOf", "oneOf"):
        if key in schema:
            branches = [schema_errors(value, s, root, where) for s in schema[key]]
            ok = sum(not b for b in branches)
            if ok == 0 or (key == "oneOf" and ok > 1):
                detail = "; or ".join("; ".join(b) for b in branches if b)
                errors.append(f"{at}: does not match any allowed form ({detail})")
    if "type" in schema:
        types = schema["type"] if isinstance(schema["type"], list) else [schema["type"]]
        if not any(_is(value, t) for t in types):
            return errors + [f"{at}: expected {' or '.join(types)}, got {json.dumps(value)}"]
    if "enum" in schema and value not in schema["enum"]:
        errors.append(f"{at}: {json.dumps(value)} is not one of {json.dumps(schema['enum'])}")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if "minimum" in schema and value < schema["minimum"]:
            errors.append(f"{at}: {value} is less than the minimum {schema['minimum']}")
        if "maximum" in schema and value > schema["maximum"]:
            errors.append(f"{at}: {value} is more than the maximum {schema['maximum']}")
    if isinstance(value, str):
        if "minLength" in schema and len(value) < schema["minLength"]:
            errors.append(f"{at}: {json.dumps(value)} is shorter than {schema['minLength']} characters")
        if "maxLength" in schema and len(value) > schema["maxLength"]:
            errors.append(f"{at}: {json.dumps(value)} is longer than {schema['maxLength']} characters")
        if "pattern" in schema and not re.search(schema["pattern"], value):
            errors.append(f"{at}: {json.dumps(value)} does not match {schema['pattern']}")
    if isinstance(value, dict):
        for req in schema.get("required", []):
            if req not in value:
                errors.append(f"{at}: missing required key {req!r}")
        props = schema.get("properties", {})
        extra = schema.get("additionalProperties", True)
        for k, v in value.items():
            sub = f"{where}.{k}" if where else k
            if k in props:
                errors += schema_errors(v, props[k], root, sub)
            elif extra is False:
                errors.append(f"{sub}: unknown key (allowed: {', '.join(sorted(props))})")
            elif isinstance(extra, dict):
                errors += schema_errors(v, extra, root, sub)
    if isinstance(value, list):
        if "minItems" in schema and len(value) < schema["minItems"]:
            errors.append(f"{at}: needs at least {schema['minItems']} item(s)")
        if "maxItems" in schema and len(value) > schema["maxItems"]:
            errors.append(f"{at}: at most {schema['maxItems']} item(s)")
        if "items" in schema:
            for i, v in enumerate(value):
                errors += schema_errors(v, schema["items"], root, f"{where}[{i}]")
    return errors


def cross_errors(values: dict[str, Any]) -> list[str]:
    """The checks of the chart's ``featx.validateValues`` template, same wording."""
    errors: list[str] = []
    seen: set[str] = set()
    enabled = 0
    for i, c in enumerate(values.get("gpuClasses") or []):
        name = c.get("name")
        if name in seen:
            errors.append(f"gpuClasses[{i}].name {json.dumps(name)} is used twice: give each class its own name "
                          "(in the gpuClasses list of your -f values file)")
        seen.add(name)
        if c.get("enabled", True) is not False:
            enabled += 1
        resource = c.get("resource") or ""
        if "mig-" in resource and int(c.get("maxPerNode") or 1) > 1:
            errors.append(f"gpuClasses[{i}] ({name}): a MIG slice is one device per process; "
                          "set its maxPerNode to 1")
        if not resource and int(c.get("maxPerNode") or 1) > 1:
            errors.append(f'gpuClasses[{i}] ({name}): a CPU class (resource "") has no devices to split a model '
                          "over; set its maxPerNode to 1")
    if enabled == 0:
        errors.append("gpuClasses: no class is enabled, so no model can be sized; set "
                      "enabled: true on one in your -f values file")
    hf = values.get("hfToken") or {}
    if hf.get("secretName") and not hf.get("key"):
        errors.append("hfToken.key is empty: name the Secret key holding the token (--set hfToken.key=HF_TOKEN)")
    sa = values.get("serviceAccount") or {}
    if not sa.get("create") and not sa.get("name") and int((values.get("controller") or {}).get("replicas", 1)) > 0:
        errors.append("serviceAccount.create=false needs serviceAccount.name (an existing ServiceAccount allowed "
                      "to list/create/delete Jobs and list Pods)")
    return errors


def check(values: dict[str, Any], chart: Path | None = None) -> None:
    schema = json.loads((chart_dir(chart) / "values.schema.json").read_text())
    errors = schema_errors(values, schema)
    if not errors:
        errors = cross_errors(values)
    if errors:
        raise UsageError("invalid chart values:\n  - " + "\n  - ".join(errors) + "\n(fix with -f FILE or --set KEY=VALUE)")


# -- what the chart renders -----------------------------------------------------------------


def _trunc(s: str) -> str:
    return s[:63].rstrip("-")


def fullname(values: dict[str, Any], release: str, chart_name: str = "featx") -> str:
    if values.get("fullnameOverride"):
        return _trunc(values["fullnameOverride"])
    name = values.get("nameOverride") or chart_name
    return _trunc(release) if name in release else _trunc(f"{release}-{name}")


def store_url(values: dict[str, Any]) -> str:
    s3 = values["s3"]
    prefix = (s3.get("prefix") or "").strip("/")
    return f"s3://{s3['bucket']}/{prefix}" if prefix else f"s3://{s3['bucket']}"


def _s3_env(values: dict[str, Any]) -> list[dict[str, Any]]:
    s3 = values["s3"]
    env: list[dict[str, Any]] = []
    if s3.get("endpoint"):
        env.append({"name": "AWS_ENDPOINT_URL", "value": s3["endpoint"]})
    if s3.get("region"):
        env.append({"name": "AWS_REGION", "value": s3["region"]})
    cred = s3.get("credentialsSecret") or {}
    if cred.get("name"):
        for var, key in (("AWS_ACCESS_KEY_ID", "accessKeyIdKey"), ("AWS_SECRET_ACCESS_KEY", "secretAccessKeyKey")):
            env.append({"name": var, "valueFrom": {"secretKeyRef": {"name": cred["name"], "key": cred.get(key)}}})
    return env


def job_env(values: dict[str, Any]) -> list[dict[str, Any]]:
    cache = values["modelCache"]["mountPath"]
    env: list[dict[str, Any]] = [
        {"name": "HOME", "value": "/tmp"},
        {"name": "XDG_CACHE_HOME", "value": cache},
        {"name": "HF_HOME", "value": f"{cache}/huggingface"},
        {"name": "TORCH_HOME", "value": f"{cache}/torch"},
        {"name": "FEATX_HOME", "value": f"{cache}/featx"},
    ]
    env += _s3_env(values)
    hf = values.get("hfToken") or {}
    if hf.get("secretName"):
        env.append({"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {"name": hf["secretName"], "key": hf.get("key")}}})
    env += [dict(e) for e in (values["job"].get("env") or [])]
    return env


def job_template(values: dict[str, Any], app_version: str) -> dict[str, Any]:
    job = values["job"]
    image = f"{values['image']['repository']}:{values['image'].get('tag') or app_version}"
    pod: dict[str, Any] = {"restartPolicy": "Never", "automountServiceAccountToken": False}
    if job.get("serviceAccountName"):
        pod["serviceAccountName"] = job["serviceAccountName"]
    if job.get("priorityClassName"):
        pod["priorityClassName"] = job["priorityClassName"]
    if values.get("imagePullSecrets"):
        pod["imagePullSecrets"] = copy.deepcopy(values["imagePullSecrets"])
    cache = values["modelCache"]
    pod.update({
        "securityContext": copy.deepcopy(values.get("podSecurityContext")),
        "nodeSelector": dict(job.get("nodeSelector") or {}),
        "tolerations": copy.deepcopy(job.get("tolerations") or []),
        "containers": [{
            "name": "extract",
            "image": image,
            "imagePullPolicy": values["image"].get("pullPolicy"),
            "command": ["featx", "extract"],
            "terminationMessagePolicy": "FallbackToLogsOnError",
            "env": job_env(values),
            "securityContext": copy.deepcopy(values.get("containerSecurityContext")),
            "resources": copy.deepcopy(job.get("resources")),
            "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}, {"name": "cache", "mountPath": cache["mountPath"]}],
        }],
        "volumes": [
            {"name": "tmp", "emptyDir": {}},
            {"name": "cache", "persistentVolumeClaim": {"claimName": cache["existingClaim"]}} if cache.get("existingClaim")
            else {"name": "cache", "emptyDir": {"sizeLimit": cache.get("sizeLimit")}},
        ],
    })
    return {"activeDeadlineSeconds": job.get("activeDeadlineSeconds"),
            "podAnnotations": dict(job.get("podAnnotations") or {}), "podSpec": pod}


def run_config(values: dict[str, Any], release: str = "featx", namespace: str = "default",
               chart: str | Path | None = None) -> dict[str, Any]:
    """The ConfigMap's ``run.yaml`` for these values, as ``featx.runConfig`` renders it."""
    meta = chart_meta(chart_dir(chart))
    app_version = str(meta.get("appVersion"))
    return {
        "release": release,
        "namespace": namespace,
        "fullname": fullname(values, release, meta["name"]),
        "appVersion": app_version,
        "modelset": values.get("modelset"),
        "modality": values.get("modality"),
        "pool": values.get("pool"),
        "dataset": values.get("dataset"),
        "subset": values.get("subset"),
        "captionIdx": values.get("captionIdx"),
        "numSamples": values.get("numSamples"),
        "batchSize": values.get("batchSize"),
        "qlora": values.get("qlora"),
        "store": store_url(values),
        "concurrency": values.get("concurrency"),
        "attempts": values.get("attempts"),
        "intervalSeconds": (values.get("controller") or {}).get("intervalSeconds"),
        "kueueQueue": (values.get("kueue") or {}).get("queueName") or "",
        "extraArgs": list((values.get("job") or {}).get("extraArgs") or []),
        "gpuClasses": copy.deepcopy(values.get("gpuClasses")),
        "jobTemplate": job_template(values, app_version),
    }
