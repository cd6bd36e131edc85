"""One factory: a catalog entry becomes a loaded model (HF causal LM or timm) on a device.

Loading failures are classified here, once: a model that is missing, gated without a token or of
an architecture the installed libraries do not know is a ``PermanentError`` (never retried);
network trouble is a ``TransientError``. Unsupported attention kernels or dtypes fall back
(sdpa -> eager, bf16 -> fp16 -> fp32) and the fallback is recorded for the manifest.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from featx import settings
from featx.catalog.spec import ModelSpec
from featx.errors import PermanentError, TransientError, UsageError


# Where an image-text checkpoint (Gemma 3 4B+) keeps its language model's weights, mapped onto the
# text-only causal LM that featx builds from ``text_config``.
TEXT_MODEL_KEYS = {r"^language_model\.model\.": "model.", r"^model\.language_model\.": "model.",
                   r"^language_model\.lm_head\.": "lm_head."}


@dataclass
class Loaded:
    """A ready model with what the manifest must record about how it was built."""

    model: Any
    tokenizer: Any = None  # language models
    transform: Any = None  # vision models
    num_params: int = 0
    dtype: str = "float32"
    device: str = "cpu"
    attn_implementation: str | None = None
    revision: str | None = None
    fallbacks: list[str] = field(default_factory=list)


def pick_device(requested: str | None = None) -> str:
    """The device to run on: ``requested`` if this machine has it, else a one-line error before any
    work (a missing GPU would otherwise fail every model, each retried as transient)."""
    if not requested:
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(requested)
    except RuntimeError:
        raise UsageError(f"--device {requested!r}: use cpu, cuda or cuda:N") from None
    if device.type == "cuda":
        have = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if not have:
            raise UsageError(f"--device {requested}: torch {torch.__version__} sees no GPU (CUDA "
                             f"{torch.version.cuda or 'not built in'}); a GPU node needs the NVIDIA driver and "
                             "container toolkit, or run with --device cpu")
        if device.index is not None and device.index >= have:
            raise UsageError(f"--device {requested}: this machine has {have} GPU(s), cuda:0 to cuda:{have - 1}")
    return requested


def pick_dtype(device: str, fallbacks: list[str]) -> torch.dtype:
    """bf16 on GPUs that support it, else fp16 on GPU; fp32 on CPU (as the seed asks)."""
    if not device.startswith("cuda"):
        return torch.float32
    if torch.cuda.is_bf16_supported():
        return torch.bfloat16
    fallbacks.append("dtype: bfloat16 unsupported on this GPU -> float16")
    return torch.float16


def planned_dtype(spec: ModelSpec, device: str) -> str:
    """The dtype ``spec`` computes in on ``device``, known before loading (part of a run's identity)."""
    if spec.modality == "vision":
        return "float32"
    return str(pick_dtype(device, [])).removeprefix("torch.")


def classify_load_error(model_id: str, exc: BaseException) -> Exception:
    """Turn a loader exception into featx's failure policy, with the fix in the message."""
    text = f"{type(exc).__name__}: {exc}"
    low = text.lower()
    if "gated" in low or "401" in low or "403" in low or "restricted" in low:
        has_token = settings.hf_token() is not None
        fix = ("accept the model's license on its hub page for the token's account" if has_token
               else f"set {settings.HF_TOKEN_ENV} to a token that has accepted the model's license")
        return PermanentError(f"{model_id} is gated: {fix}")
    offline = settings.hf_offline()
    if offline and ("couldn't connect" in low or "cached files" in low or "offline" in low):
        return PermanentError(f"{model_id} is not in the local Hugging Face cache and HF_HUB_OFFLINE=1: "
                              "download it first (or unset HF_HUB_OFFLINE)")
    if any(s in low for s in ("connection", "couldn't connect", "timed out", "temporarily", "max retries",
                              "network is unreachable")):
        return TransientError(f"{model_id}: cannot reach the hub ({type(exc).__name__}); check the network or HF_ENDPOINT and retry")
    if ("not a valid model identifier" in low or "repository not found" in low or "404" in low
            or "unknown model" in low or "does not appear to have a file" in low or "no such file" in low):
        return PermanentError(f"{model_id} was not found on the hub or on disk; check the id with `featx models --check`")
    if ("does not recognize this architecture" in low or "unrecognized configuration" in low
            or "model type" in low or "model_type" in low or "trust_remote_code" in low
            or isinstance(exc, (KeyError, NotImplementedError))):
        return PermanentError(f"{model_id}: architecture not supported by the installed libraries ({text.splitlines()[0][:160]}); upgrade transformers/timm or drop the model")
    return exc if isinstance(exc, Exception) else RuntimeError(text)


def language_part(config: Any, fallbacks: list[str]) -> tuple[Any, dict[str, Any]]:
    """The config to build and extra ``from_pretrained`` arguments: an image-text model
    (``text_config`` beside ``vision_config``: Gemma3ForConditionalGeneration) is extracted as its
    language model alone, a causal LM of ``text_config`` whose weights come from the checkpoint's
    language-model part."""
    text = getattr(config, "text_config", None)
    if text is None or getattr(config, "vision_config", None) is None:
        return config, {}
    fallbacks.append(f"{config.model_type}: image-text checkpoint -> its language model ({text.model_type}) only")
    return text, {"key_mapping": TEXT_MODEL_KEYS}


def _count_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _tokenizer(spec: ModelSpec, token: str | None):
    if spec.tokenizer == "tiny-bpe":
        from featx.extract.tokenizer import tiny_bpe

        return tiny_bpe(spec.vocab or 512)
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(spec.load_id, revision=spec.revision, token=token,
                                         trust_remote_code=spec.trust_remote_code)


def load_language(spec: ModelSpec, init: str, device: str, qlora: bool = False, seed: int = 0) -> Loaded:
    from transformers import AutoConfig, AutoModelForCausalLM

    token = settings.hf_token()
    fallbacks: list[str] = []
    dtype = pick_dtype(device, fallbacks)
    common: dict[str, Any] = {"trust_remote_code": spec.trust_remote_code}
    placed = qlora  # bitsandbytes places quantised weights itself
    try:
        if spec.arch and spec.config:  # a config given as data (smoke models)
            tokenizer = _tokenizer(spec, token)
            special = {"bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id}
            config = AutoConfig.for_model(spec.arch, **{**special, **spec.config})
        else:  # the config first: an unknown architecture fails here, in a second
            config = AutoConfig.from_pretrained(spec.load_id, revision=spec.revision, token=token, **common)
            tokenizer = _tokenizer(spec, token)
        config, part = language_part(config, fallbacks)
        if spec.init == "random" or init == "random":
            torch.manual_seed(seed)
            model, attn = _build(lambda **kw: AutoModelForCausalLM.from_config(config, **kw), dtype, common, fallbacks)
            num_params = _count_params(model)
            if qlora:
                model = _quantize_4bit(model, device, fallbacks)
        else:
            kwargs: dict[str, Any] = {"revision": spec.revision, "token": token, **common, **part}
            if qlora:
                kwargs["quantization_config"] = _bnb_config(dtype, _cpu_unquantisable(config, device, fallbacks))
            if device.startswith("cuda"):
                kwargs["device_map"] = "auto" if torch.cuda.device_count() > 1 else device
                placed = True
            model, attn = _build(lambda **kw: AutoModelForCausalLM.from_pretrained(spec.load_id, config=config, **kw, **kwargs),
                                 dtype, {}, fallbacks)
            num_params = _params_before_quantising(model, spec) if qlora else _count_params(model)
    except (PermanentError, TransientError, UsageError):
        raise
    except Exception as e:  # loaders raise many types; classify once
        raise classify_load_error(spec.id, e) from e
    if not placed:
        model = model.to(device)
    model.eval()
    if tokenizer.pad_token_id is None:
        fallbacks.append("tokenizer: no pad token -> EOS (as the reference)")
    return Loaded(model, tokenizer=tokenizer, num_params=num_params, dtype=str(dtype).removeprefix("torch."),
                  device=device, attn_implementation=attn, revision=spec.revision, fallbacks=fallbacks)


def _build(factory, dtype: torch.dtype, common: dict, fallbacks: list[str]):
    """Build with sdpa attention, falling back to eager where the architecture lacks it."""
    try:
        return factory(dtype=dtype, attn_implementation="sdpa", **common), "sdpa"
    except (ValueError, ImportError) as e:
        if "sdpa" not in str(e).lower() and "attn" not in str(e).lower():
            raise
        fallbacks.append(f"attention: sdpa unsupported -> eager ({str(e).splitlines()[0][:120]})")
        return factory(dtype=dtype, attn_implementation="eager", **common), "eager"


def _bnb_config(dtype: torch.dtype, skip: list[str] | None = None):
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                              bnb_4bit_compute_dtype=dtype, llm_int8_skip_modules=skip)


#: bitsandbytes' CPU 4-bit kernel needs every quantised Linear's output size to be a multiple of this.
CPU_4BIT_BLOCK = 32


def _cpu_unquantisable(config, device: str, fallbacks: list[str]) -> list[str] | None:
    """On the CPU, the Linear layers bitsandbytes cannot run in 4-bit (output size not a multiple
    of ``CPU_4BIT_BLOCK``, e.g. a single 16-wide key/value head), kept in the compute dtype with
    ``lm_head`` (which transformers never quantises); None elsewhere (bitsandbytes' own default)."""
    from transformers import AutoModelForCausalLM

    if device != "cpu":
        return None
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    odd = sorted({name.rsplit(".", 1)[-1] for name, m in model.named_modules()
                  if isinstance(m, torch.nn.Linear) and m.out_features % CPU_4BIT_BLOCK})
    if not odd:
        return None
    fallbacks.append(f"qlora on cpu: {', '.join(odd)} kept unquantised (output size not a multiple of "
                     f"{CPU_4BIT_BLOCK}, which bitsandbytes' CPU kernel needs)")
    return ["lm_head", *odd]


def _quantize_4bit(model, device: str, fallbacks: list[str]):
    """Quantise a randomly initialised model to NF4 the way from_pretrained would (for tests and
    random baselines): save, then reload with the bitsandbytes config."""
    import tempfile

    from transformers import AutoModelForCausalLM

    skip = _cpu_unquantisable(model.config, device, fallbacks)
    with tempfile.TemporaryDirectory() as tmp:
        model.save_pretrained(tmp)
        q = AutoModelForCausalLM.from_pretrained(tmp, quantization_config=_bnb_config(model.dtype, skip),
                                                 dtype=model.dtype)
    fallbacks.append("qlora: random weights quantised to NF4 after init")
    return q


def _params_before_quantising(model, spec: ModelSpec) -> int:
    """A 4-bit model stores two weights per byte; count the unquantised architecture instead."""
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        return _count_params(AutoModelForCausalLM.from_config(model.config))


def load_vision(spec: ModelSpec, init: str, device: str, seed: int = 0) -> Loaded:
    import timm
    from timm.data import create_transform, resolve_data_config

    name = spec.load_id
    pretrained = not (spec.init == "random" or init == "random")
    try:
        if not timm.is_model(name.split(".")[0]):
            raise PermanentError(f"{spec.id}: timm {timm.__version__} has no model {name!r}; see timm.list_pretrained()")
        torch.manual_seed(seed)
        model = timm.create_model(name, pretrained=pretrained, **spec.config)
    except (PermanentError, TransientError):
        raise
    except Exception as e:
        raise classify_load_error(spec.id, e) from e
    if not hasattr(model, "forward_intermediates"):
        raise PermanentError(f"{spec.id}: timm model lacks forward_intermediates; featx cannot take per-block features")
    transform = create_transform(**resolve_data_config(model.pretrained_cfg, model=model))
    model = model.to(device).eval()
    return Loaded(model, transform=transform, num_params=_count_params(model), dtype=planned_dtype(spec, device),
                  device=device)
