"""How many rows a run's data set has, learned without downloading it: the controller lays out a
model's row shards (``sharding.rowsPerShard``) before any Job runs. The first that says wins:

1. ``numSamples``: the rows the run asks for (a pod refuses a data set with fewer, exit code 2);
2. a local data set the controller can see: its own count, read as ``featx extract`` reads it
   (``save_to_disk`` memory-mapped, an image folder's captions file);
3. a Hub data set: its card's ``dataset_info.splits`` (the ``train`` split's ``num_examples``, as
   ``datasets`` writes it), one small API call at the run's revision.

None when none says (offline, no card, a path only the Jobs mount): the model then runs as one Job
that commits its shards in turn (``--shard_rows``), still resumable, only not in parallel. A thin
adapter: ``rows_in_card`` is pure, the rest is I/O the controller does once per process.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping

from featx.data.datasets import SAMPLE_NAME, is_local_path, load_rows
from featx.errors import FeatxError
from featx.pipeline.request import RunRequest

SPLIT = "train"  # the split featx extract reads
HUB_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class RowCount:
    rows: int | None
    source: str  # where the number comes from, or why there is none


def rows_in_card(card: Mapping[str, Any], split: str = SPLIT) -> int | None:
    """``num_examples`` of ``split`` in a data set card's ``dataset_info`` (one config's dict, or a
    list of them: the ``default`` config's, else the only one's); None when the card does not say."""
    info = card.get("dataset_info")
    if isinstance(info, list):
        configs = [c for c in info if isinstance(c, Mapping)]
        only = configs[0] if len(configs) == 1 else None
        info = next((c for c in configs if c.get("config_name") == "default"), only)
    if not isinstance(info, Mapping):
        return None
    for s in info.get("splits") or ():
        if isinstance(s, Mapping) and s.get("name") == split and isinstance(s.get("num_examples"), int):
            return s["num_examples"] if s["num_examples"] > 0 else None
    return None


def hub_card(repo: str, revision: str) -> dict[str, Any]:
    """The Hub data set card's metadata at ``revision`` (the README's YAML header)."""
    from huggingface_hub import HfApi

    info = HfApi().dataset_info(repo, revision=revision, timeout=HUB_TIMEOUT_S)
    return info.card_data.to_dict() if info.card_data is not None else {}


def count_rows(request: RunRequest, card: Callable[[str, str], Mapping[str, Any]] = hub_card) -> RowCount:
    """The run's row count by the rules above."""
    if request.num_samples:
        return RowCount(request.num_samples, "numSamples")
    dataset = request.dataset
    if dataset == SAMPLE_NAME or is_local_path(dataset):
        try:
            return RowCount(len(load_rows(dataset, request.subset, request.caption_idx)), f"{dataset} (local)")
        except FeatxError as e:
            return RowCount(None, f"{dataset} cannot be read here ({e})")
    repo, revision = request.naming
    try:
        rows = rows_in_card(card(repo, revision))
    except Exception as e:  # noqa: BLE001 - offline, gated, not found: every cause falls back alike
        return RowCount(None, f"the Hub has no metadata of {repo}@{revision} here ({type(e).__name__})")
    if rows is None:
        return RowCount(None, f"{repo}@{revision}'s card gives no {SPLIT} row count")
    return RowCount(rows, f"{repo}@{revision} card")
