"""Runs are compared only with runs on the same data.

Every run carries the tag `data_digest` (the digest of the data files it read: dataset.fingerprint)
and `data.name` (fashion-mnist for the official files, else its folder's name). `choose` picks
the data that `model_uri=best`, the report and a sweep's summary compare runs on: `dataset=auto`
takes the data of the newest of the runs considered; a name or a digest (or its first characters)
takes that data. Runs recorded before runs named their data form one group of their own.
"""

from collections.abc import Iterable
from dataclasses import dataclass

from fmnist_exp.errors import UserError

UNRECORDED = "unrecorded"  # the digest of runs that did not record their data


@dataclass
class Data:
    digest: str
    name: str
    runs: int = 0

    def __str__(self) -> str:
        return f"{self.name} (data_digest {self.digest}, {self.runs} run{'s' * (self.runs != 1)})"


def tags_of(tags: dict) -> tuple[str, str]:
    """(data_digest, data.name) from a run's tags."""
    digest = tags.get("data_digest") or UNRECORDED
    return digest, tags.get("data.name") or ("data not recorded" if digest == UNRECORDED else "?")


def groups(runs: Iterable[tuple[str, str]]) -> list[Data]:
    """The data of (data_digest, data.name) pairs, newest first, in order of first appearance."""
    found: dict[str, Data] = {}
    for digest, name in runs:
        found.setdefault(digest, Data(digest, name)).runs += 1
    return list(found.values())


def choose(runs: list[tuple[str, str]], wanted: str, who: str) -> tuple[Data, str]:
    """(the data to compare on, a note naming what was left out or ''). `runs`: (data_digest,
    data.name) per run, newest first; `wanted`: auto, a data.name or a digest prefix. `who` (e.g.
    'model_uri=best') starts the error when nothing matches."""
    found = groups(runs)
    wanted = str(wanted).strip()
    if wanted == "auto":
        chosen = found[:1]
    else:
        chosen = [d for d in found if wanted in (d.name, d.digest)] or [
            d for d in found if len(wanted) >= 4 and d.digest.startswith(wanted)
        ]
    listed = "; ".join(map(str, found))
    if len(chosen) != 1:
        why = "names several data: give its data_digest" if chosen else "matches none of them"
        raise UserError(
            f"{who}: dataset={wanted} {why}. The runs read: {listed}. Pass dataset=auto (the "
            f"newest run's data), a name or a data_digest from this list."
        )
    others = [d for d in found if d is not chosen[0]]
    note = ""
    if others:
        note = (
            f"compared {chosen[0]}; left out {sum(d.runs for d in others)} run(s) on other data: "
            f"{'; '.join(map(str, others))} (dataset=<name or data_digest> compares those)"
        )
    return chosen[0], note
