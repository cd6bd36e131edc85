"""Fetch committed features for analysis, verifying the checksum: ``featx.load(...)``."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import torch

from featx import settings
from featx.catalog import get_spec
from featx.pipeline.keys import artifact_key
from featx.store import ArtifactKey, Manifest, Store, open_store
from featx.store.formats import feature_layers, read_tensors


@dataclass
class Features:
    """A committed feature file: the reference's tensors and the manifest that commits them."""

    tensors: dict[str, Any]
    manifest: Manifest

    @property
    def feats(self) -> torch.Tensor | list[torch.Tensor]:
        """``[N, L, D]`` where all layers have one width; else a list of ``[N, C_l]`` (convnets)."""
        return self.tensors["feats"]

    @property
    def is_list(self) -> bool:
        """True when ``feats`` is the list form (layers of different widths)."""
        return isinstance(self.feats, list)

    @property
    def layers(self) -> list[torch.Tensor]:
        """One ``[N, C_l]`` tensor per layer, whichever form ``feats`` has."""
        return feature_layers(self.feats)

    @property
    def layer_indices(self) -> list[int]:
        """The model's layer each of ``layers`` is (``--layers`` kept only these; else all)."""
        return self.manifest.layer_indices or list(range(_depth(self.manifest)))


@dataclass
class ShardedFeatures:
    """A model's features in row shards, read a shard at a time (each sha256 verified as it is
    read, then memory-mapped: a tensor's pages are read only when touched): ``shard(i)``,
    ``rows(start, end)`` and ``layer(l)`` hold only what they need; ``feats`` and ``layers`` build
    the whole ``[N, L, D]`` on request."""

    store: Store
    keys: list[ArtifactKey]  # in row order
    manifests: list[Manifest]
    model_id: str | None = None

    @property
    def num_shards(self) -> int:
        return len(self.keys)

    @property
    def num_rows(self) -> int:
        return sum(m.num_rows or 0 for m in self.manifests)

    @property
    def manifest(self) -> Manifest:
        """The first shard's manifest (identity, dtype, layers: every shard's are the same)."""
        return self.manifests[0]

    @property
    def layer_indices(self) -> list[int]:
        """The model's layer each layer of the view is (as ``Features.layer_indices``)."""
        return self.manifest.layer_indices or list(range(_depth(self.manifest)))

    def shard(self, index: int) -> Features:
        """Shard ``index`` (rows ``manifests[index].row_start`` on), memory-mapped."""
        return load_key(self.store, self.keys[index], self.model_id, mmap=True)

    def __iter__(self) -> Iterator[Features]:
        return (self.shard(i) for i in range(self.num_shards))

    def rows(self, start: int, end: int) -> torch.Tensor | list[torch.Tensor]:
        """Features of rows ``[start, end)``, reading only the shards that hold them."""
        parts = []
        for index, m in enumerate(self.manifests):
            lo, hi = max(start, m.row_start or 0), min(end, m.row_end or 0)
            if lo < hi:
                part = self.shard(index)
                parts.append(_rows(part.feats, lo - (m.row_start or 0), hi - (m.row_start or 0)))
        return _cat(parts)

    def layer(self, index: int) -> torch.Tensor:
        """``[N, D]`` of stored layer ``index`` (the model's layer ``layer_indices[index]``): only
        that layer's bytes of each shard are copied."""
        return torch.cat([feature_layers(part.feats)[index] for part in self])

    @property
    def feats(self) -> torch.Tensor | list[torch.Tensor]:
        """The whole ``[N, L, D]`` (or the list form), every shard read once."""
        return _cat([part.feats for part in self])

    @property
    def scalars(self) -> dict[str, Any]:
        """What the files hold besides features and rows: ``num_params`` (every shard's is the
        model's). ``bpb`` is a shard's own (bits per byte of its texts), so a model's is not kept."""
        first = self.shard(0).tensors
        return {k: first[k] for k in ("num_params",) if k in first}

    @property
    def layers(self) -> list[torch.Tensor]:
        return feature_layers(self.feats)


def _depth(manifest: Manifest) -> int:
    """Layers in a file from its manifest alone (``shape`` is ``[N, L, D]`` or ``[N, L]``)."""
    return manifest.shape[1]


def _rows(feats: torch.Tensor | list[torch.Tensor], start: int, end: int) -> torch.Tensor | list[torch.Tensor]:
    return [t[start:end] for t in feats] if isinstance(feats, list) else feats[start:end]


def _cat(parts: list) -> torch.Tensor | list[torch.Tensor]:
    if parts and isinstance(parts[0], list):
        return [torch.cat(layer) for layer in zip(*parts)]
    return torch.cat(parts)


def load_sharded(store: Store, key: ArtifactKey, model_id: str | None = None) -> ShardedFeatures | None:
    """The row shards committed for ``key``'s model, as a lazy view; None when it has none.
    Refused unless every shard of one layout is committed (a partial model is not features)."""
    from featx.pipeline.shards import committed_shards

    states = committed_shards(store.scan(key.model_stem + "/"), key.model_stem)
    done = sorted(((st.manifest.row_start or 0, stem, st.manifest) for stem, st in states.items()
                   if st.state == "done" and st.manifest is not None and st.manifest.format == key.fmt),
                  key=lambda x: x[0])
    if not states:
        return None
    totals = {m.num_shards for _, _, m in done}
    if len(totals) != 1 or len(done) != totals.pop():
        raise FileNotFoundError(f"{key.model_stem} in {store.url} has {len(done)} committed shard(s) of "
                                f"{max((m.num_shards or 0 for _, _, m in done), default=0) or '?'}; "
                                "run `featx extract` to complete it")
    keys = [key.shard(i, len(done)) for i in range(len(done))]
    return ShardedFeatures(store, keys, [m for _, _, m in done], model_id)


def load_key(store: Store, key: ArtifactKey, model_id: str | None = None, mmap: bool = False) -> Features:
    """The file at ``key``, checksum verified; refused when its manifest belongs to another file
    or (given ``model_id``) to another model: a copied or mis-synced manifest never passes.
    ``mmap``: the tensors map the verified copy (unlinked at once: the mapping keeps it)."""
    with tempfile.TemporaryDirectory(prefix="featx-load-") as tmp:
        dest = Path(tmp) / Path(key.data).name
        manifest = store.verify(key, dest)
        if model_id is not None and manifest.model_id != model_id:
            raise ValueError(f"{key.data} in {store.url} holds features of {manifest.model_id}, not {model_id} "
                             "(copied or mis-synced); re-extract it with `featx extract --force_remake`")
        return Features(read_tensors(dest, manifest.format, mmap=mmap), manifest)


def load(model: str, store: str | Store | None = None, *, dataset: str = settings.DEFAULT_DATASET,
         subset: str | None = None, pool: str | None = None, caption_idx: int = 0,
         fmt: str = "pt") -> Features | ShardedFeatures:
    """Features of ``model`` from ``store`` (a URL, directory or Store), checked against the
    manifest's sha256. ``dataset``/``subset`` as given to ``featx extract`` (an HF id, ``prh``,
    featx-sample or a local path; subset None: that data set's default); ``pool`` defaults to avg
    for language models, cls for vision models with a class token and avg for the others. A model
    stored in row shards comes back as a ``ShardedFeatures`` view, read a shard at a time."""
    st = store if isinstance(store, Store) else open_store(store)
    spec = get_spec(model)
    key = artifact_key(spec, dataset, subset, pool, caption_idx, fmt)
    if st.state(key).state != "done":
        sharded = load_sharded(st, key, spec.id)
        if sharded is not None:
            return sharded
    return load_key(st, key, spec.id)
