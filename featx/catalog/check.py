"""``featx models --check``: can every model of a selection be fetched and loaded by this install?

Per model: the id resolves on the hub (or is a local directory), whether the hub gates it (and
whether a token is available), that the installed transformers knows its ``model_type``, and for
vision models that the installed timm has the tagged pretrained weights and that the hub repo its
pretrained config points to exists. Nothing is downloaded but repo metadata.

``check_models`` is pure apart from the ``hub`` adapter it is given; ``featx.catalog.hub.HubAdapter``
is the real one, a thin layer over ``huggingface_hub.HfApi``. torch, transformers and timm are imported only
inside functions: the catalog package imports without them.
"""

from __future__ import annotations

import functools
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterable

from featx.catalog.hub import Hub, HubInfo, default_token, hub_endpoint, is_network_error, one_line, unreachable
from featx.catalog.spec import ModelSpec
from featx.errors import TransientError
from featx.settings import HF_TOKEN_ENV

@dataclass(frozen=True)
class CheckResult:
    id: str
    ok: bool
    gated: bool = False
    reason: str = ""
    fix: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


_DEFAULT: Any = object()


def check_models(
    specs: Iterable[ModelSpec], hub: Hub, token: str | None = _DEFAULT
) -> list[CheckResult]:
    """One ``CheckResult`` per spec, in order. Raises ``TransientError`` if the hub is unreachable.

    ``token`` defaults to ``default_token()``; pass ``None`` to check as an anonymous user.
    """
    if token is _DEFAULT:
        token = default_token()
    cache: dict[tuple[str, str | None], HubInfo] = {}

    def info(repo_id: str, revision: str | None) -> HubInfo:
        key = (repo_id, revision)
        if key not in cache:
            try:
                cache[key] = HubInfo(*hub.model_info(repo_id, revision, token))
            except TransientError:
                raise
            except Exception as e:
                if is_network_error(e):
                    raise unreachable(e) from e
                raise
        return cache[key]

    results = []
    for spec in specs:
        if spec.modality == "vision":
            results.append(_check_vision(spec, info, token))
        elif spec.modality == "language":
            results.append(_check_language(spec, info, token))
        else:
            results.append(
                CheckResult(spec.id, False, reason=f"unknown modality {spec.modality!r}",
                            fix="set modality to language or vision in its catalog entry")
            )
    return results


def _gate(repo_id: str, gated: bool, token: str | None) -> tuple[bool, str, str]:
    """(ok, reason, fix) for the gate of a repo."""
    if not gated:
        return True, "", ""
    if not token:
        return (
            False,
            f"gated on the hub and no token is set ({HF_TOKEN_ENV} unset, no saved login)",
            f"accept the license at {hub_endpoint()}/{repo_id} with your account, then export "
            f"{HF_TOKEN_ENV}=<a read token of that account>",
        )
    return True, "gated; a token is set (access to this repo is granted on its page, not verified here)", ""


@functools.cache
def _config_mapping() -> Any:
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    return CONFIG_MAPPING


def _transformers_version() -> str:
    import transformers

    return transformers.__version__


def _supported_model_type(model_type: str) -> bool:
    return model_type in _config_mapping()


def _image_text(model_type: str) -> bool:
    """An image-text architecture (Gemma 3 4B+): featx extracts only its language model."""
    return "vision_config" in (getattr(_config_mapping()[model_type], "sub_configs", None) or {})


def _check_language(spec: ModelSpec, info: Any, token: str | None) -> CheckResult:
    load_id = spec.load_id
    notes: list[str] = []
    fixes: list[str] = []
    gated = False
    local = Path(load_id)
    if local.is_dir():
        cfg_path = local / "config.json"
        if not cfg_path.exists():
            return CheckResult(spec.id, False, reason=f"local directory {load_id} has no config.json",
                               fix="save the model with save_pretrained() into that directory")
        try:
            model_type = json.loads(cfg_path.read_text()).get("model_type")
        except (OSError, ValueError) as e:
            return CheckResult(spec.id, False, reason=f"{cfg_path}: unreadable ({one_line(e)})",
                               fix="rewrite it with save_pretrained()")
        notes.append("local directory")
    elif spec.init == "random" and spec.config and spec.source is None:
        # Built from the catalog's own config (smoke models): nothing to fetch from the hub.
        model_type = spec.arch
        notes.append("random init from the catalog's config (nothing to download)")
    else:
        exists, gated, model_type = info(load_id, spec.revision)
        if not exists:
            rev = f" at revision {spec.revision!r}" if spec.revision else ""
            return CheckResult(
                spec.id, False,
                reason=f"{load_id}{rev} not found on the hub (or private)",
                fix=f"check the id at {hub_endpoint()}/{load_id}; a private repo needs {HF_TOKEN_ENV}",
            )
        ok, reason, fix = _gate(load_id, gated, token)
        if not ok:
            return CheckResult(spec.id, False, gated=True, reason=reason, fix=fix)
        if reason:
            notes.append(reason)
        if model_type is None:
            model_type = spec.arch
            notes.append("the hub shows no model_type; checked the catalog's arch")
        elif spec.arch and spec.arch != model_type:
            notes.append(f"catalog arch {spec.arch!r} but the hub config says {model_type!r}")
            fixes.append(f"set arch: {model_type} (and recheck layers/hidden/params) in its catalog entry")

    if model_type is None:
        notes.append("model_type unknown; loading will tell")
    else:
        try:
            supported = _supported_model_type(model_type)
        except ImportError:
            return CheckResult(spec.id, False, gated, reason="transformers is not installed",
                               fix="pip install -r requirements.txt")
        if not supported:
            if spec.trust_remote_code:
                notes.append(f"model_type {model_type!r} loads through the repo's own code (trust_remote_code)")
            else:
                return CheckResult(
                    spec.id, False, gated,
                    reason=f"model_type {model_type!r} is not supported by the installed transformers "
                    f"{_transformers_version()}",
                    fix="upgrade transformers; or, if the repo ships its own modelling code and you "
                    "trust it, set trust_remote_code: true in its modelset entry and pass --trust-remote-code",
                )
        elif _image_text(model_type):
            notes.append(f"model_type {model_type!r} is image-text: featx extracts its language model only")
    return CheckResult(spec.id, True, gated, reason="; ".join(notes) or "ok", fix="; ".join(fixes))


@functools.cache
def _timm_pretrained() -> frozenset[str]:
    import timm

    return frozenset(timm.list_pretrained())


def _check_vision(spec: ModelSpec, info: Any, token: str | None) -> CheckResult:
    try:
        import timm
        from timm.models import get_pretrained_cfg
    except ImportError:
        return CheckResult(spec.id, False, reason="timm is not installed", fix="pip install -r requirements.txt")
    name = spec.load_id
    arch, _, tag = name.partition(".")
    pretrained = _timm_pretrained()
    notes: list[str] = []
    if not timm.is_model(arch):
        return CheckResult(
            spec.id, False,
            reason=f"timm {timm.__version__} has no architecture {arch!r}",
            fix="check the spelling against timm.list_models(); upgrade timm if the model is newer",
        )
    if spec.init != "random":
        tags = sorted(p for p in pretrained if p.partition(".")[0] == arch)
        if (tag and name not in pretrained) or not tags:
            choice = f"use one of: {', '.join(tags[:8])}" if tags else "choose another architecture"
            return CheckResult(
                spec.id, False,
                reason=f"timm {timm.__version__} has no pretrained weights {name!r}",
                fix=f"{choice} (timm.list_pretrained('{arch}.*'))",
            )
        cfg = get_pretrained_cfg(name)
        if not tag:
            notes.append(f"untagged: timm picks {arch}.{getattr(cfg, 'tag', None) or '?'}")
        hub_id = getattr(cfg, "hf_hub_id", None) if cfg is not None else None
        if hub_id:
            exists, gated, _ = info(hub_id, None)
            if not exists:
                return CheckResult(
                    spec.id, False,
                    reason=f"timm's weights repo {hub_id} not found on the hub",
                    fix="upgrade timm (the weights may have moved) or choose another tag",
                )
            ok, reason, fix = _gate(hub_id, gated, token)
            if not ok:
                return CheckResult(spec.id, False, gated=True, reason=reason, fix=fix)
            if reason:
                notes.append(reason)
            return CheckResult(spec.id, True, gated, reason="; ".join(notes) or "ok")
        url = getattr(cfg, "url", None) if cfg is not None else None
        notes.append(f"weights from {url} (not checked)" if url else "no download location in timm's cfg")
    return CheckResult(spec.id, True, reason="; ".join(notes) or "ok")
