"""What a command line gets before any app runs: `--help` with the config files' comments, and a
command line Hydra refuses (an unknown key, a missing option, bad syntax) explained in one
paragraph that names the closest real key or option.

Hydra prints a refused command line itself and exits 1 unless HYDRA_FULL_ERROR is set; the apps set
it while they compose (hydra_errors_raised), catch the exception and hand it to refused().
"""

import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from difflib import SequenceMatcher, get_close_matches
from pathlib import Path

from hydra.errors import HydraException, OverrideParseException
from omegaconf import OmegaConf

from fmnist_exp import checks
from fmnist_exp.checks import composed_from_files, config_keys
from fmnist_exp.errors import ConfigError
from fmnist_exp.paths import config_dir

COMMENT = re.compile(r"\s+#\s?(.*)$")  # a YAML line's trailing comment
KEY_LINE = re.compile(r"^(\s*)([\w.\-]+):(.*)$")  # `  key: value`, at any depth


@contextmanager
def hydra_errors_raised() -> Iterator[None]:
    """Hydra raises a refused command line (for refused()) instead of printing it and exiting."""
    saved = os.environ.get("HYDRA_FULL_ERROR")
    os.environ["HYDRA_FULL_ERROR"] = "1"
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop("HYDRA_FULL_ERROR", None)
        else:
            os.environ["HYDRA_FULL_ERROR"] = saved


def options_of(group: str) -> list[str]:
    """The options of a config group: the YAML files in conf/<group>/."""
    return sorted(p.stem for p in (config_dir() / group).glob("*.yaml"))


def is_group(name: str) -> bool:
    return (config_dir() / name).is_dir() and name != "hydra"


def refused(exc: HydraException, args: list[str], app: str) -> ConfigError:
    """A command line Hydra refused, as one paragraph: which argument, what is wrong, the closest
    real key or option."""
    text = " ".join(str(exc).split())
    named = app if app != "train" else "training"
    if found := re.search(r"Could not override '([^']+)'", text):
        key = found.group(1)
        given = next((a for a in args if a.lstrip("+~").split("=")[0] == key), key)
        choices = [a for a in args if "=" in a and is_group(a.split("=")[0])]
        try:
            composed = composed_from_files(choices, app)
        except HydraException:  # a group choice is wrong too: the defaults' keys
            composed = composed_from_files([], app)
        known = config_keys(OmegaConf.to_container(composed))
        parent, _, leaf = key.rpartition(".")
        siblings = {k.rpartition(".")[2]: k for k in known if k.rpartition(".")[0] == parent}
        close = (
            [siblings[n] for n in nearest(leaf, list(siblings))]
            if siblings
            else nearest(key, known)
        )
        instead = f"did you mean {' or '.join(close)}? " if close else ""
        block = key.partition(".")[0]
        if app == "train" and key != block and checks.in_block(key, checks.OPEN_BLOCKS):
            instead += (
                f"{block} also takes settings conf/ does not list (its constructor checks "
                f"them): add one as ++{given.lstrip('+')}. "
            )
        return ConfigError(
            f"{given}: {named} has no setting {key}; {instead}`python -m {module(app)} --help` "
            f"lists every key with what it takes."
        )
    if found := re.search(r"Could not find '([\w\-]+)/([^']+)'", text):
        group, option = found.groups()
        options = options_of(group)
        close = nearest(option, options)
        instead = f"Did you mean {' or '.join(f'{group}={c}' for c in close)}? " if close else ""
        return ConfigError(
            f"{group}={option}: there is no conf/{group}/{option}.yaml. {instead}The choices are "
            f"{', '.join(options)}."
        )
    if isinstance(exc, OverrideParseException):
        return ConfigError(
            f"the command line cannot be read: {text.split(' See https')[0]}. Each argument is "
            f"KEY=VALUE; lists are [a,b] and sweeps a,b (with --multirun); put a value with "
            f"spaces or quotes in quotes, e.g. 'logger.run_name=\"my run\"'."
        )
    return ConfigError(text)


def nearest(word: str, known: list[str]) -> list[str]:
    """The closest of `known` to a mistyped word, with any nearly as close (modle: module, model)."""
    close = get_close_matches(word, known, 3, 0.6)
    if not close:
        return []
    score = [SequenceMatcher(None, word, c).ratio() for c in close]
    return [c for c, s in zip(close, score, strict=True) if s >= score[0] - 0.15]


def module(app: str) -> str:
    return "fmnist_exp" if app == "train" else f"fmnist_exp.{app}"


def key_paths(lines: list[str]) -> Iterator[tuple[str, str | None, str]]:
    """(line, its key's dotted path or None, the rest of the line) for YAML in block style: the
    path from the keys above it at smaller indents."""
    stack = []
    for line in lines:
        if not (parsed := KEY_LINE.match(line)):
            yield line, None, ""
            continue
        indent, key, rest = len(parsed.group(1)), parsed.group(2), parsed.group(3)
        while stack and stack[-1][0] >= indent:
            stack.pop()
        stack.append((indent, key))
        yield line, ".".join(k for _, k in stack), rest


def comments(path: Path, prefix: str = "") -> dict[str, str]:
    """{dotted key: its trailing comment} of a YAML file's `key: value  # comment` lines; a comment
    line indented under one goes on with it."""
    found, last = {}, None
    for line, key, rest in key_paths(path.read_text().splitlines()):
        if last and key is None and (more := re.match(r"^\s{8,}#\s?(.*)$", line)):
            found[last] += " " + more.group(1)
            continue
        last = None
        if key and key != "defaults" and (note := COMMENT.search(rest)):
            last = prefix + key
            found[last] = note.group(1)
    return found


def chain(group: str, option: str) -> list[Path]:
    """A group option's file after the files of its own group it builds on (its defaults list),
    base first: their comments, the nearest winning."""
    path = config_dir() / group / f"{option}.yaml"
    bases = OmegaConf.load(path).get("defaults") or []
    names = [b for b in bases if isinstance(b, str) and b != "_self_"]
    return [p for base in names for p in chain(group, base)] + [path]


def is_global(path: Path) -> bool:
    return path.read_text().startswith("# @package _global_")


def annotate(yaml_text: str, notes: dict[str, str]) -> str:
    """YAML (block style, as OmegaConf writes it) with each key's comment from `notes` appended."""
    lines = []
    for line, key, _ in key_paths(yaml_text.splitlines()):
        if note := notes.get(key):
            line = f"{line:<40} # {note}" if len(line) < 40 else f"{line}  # {note}"
        lines.append(line)
    return "\n".join(lines)


def group_choices(path: Path) -> list[tuple[str, str | None, str]]:
    """(group, default option, comment) for each group in a primary config's defaults list, in its
    order; ("_self_", None, "") where the file's own keys come."""
    found = []
    for line in path.read_text().splitlines():
        if re.match(r"^\s*-\s*_self_\s*$", line):
            found.append(("_self_", None, ""))
        elif parsed := re.match(r"^\s*-\s*([\w\-]+):\s*([\w\-]+)(.*)$", line):
            group, option, rest = parsed.groups()
            note = COMMENT.search(rest)
            if is_group(group):
                found.append(
                    (group, None if option == "null" else option, note.group(1) if note else "")
                )
    return found


def training_help(args: list[str]) -> str:
    """`python -m fmnist_exp [GROUP=OPTION ...] --help`: the config groups with every option, then the
    settings those choices compose, each key with the comment its file gives it."""
    chosen = dict(a.split("=", 1) for a in args if "=" in a and is_group(a.split("=")[0]))
    cfg = composed_from_files([f"{g}={o}" for g, o in chosen.items()])  # a bad choice raises here
    train_yaml = config_dir() / "train.yaml"
    groups = [(g, chosen.get(g, option), note) for g, option, note in group_choices(train_yaml)]
    notes = {}
    for group, option, _ in groups:  # in the defaults list's order: later files win, as in Hydra
        if group == "_self_":
            notes |= comments(train_yaml)
        for path in chain(group, option) if option else []:
            notes |= comments(path, "" if is_global(path) else f"{group}.")
    groups = [g for g in groups if g[0] != "_self_"]
    listing = "\n".join(
        f"  {group}={option or 'null'}{'  # ' + note if note else ''}\n"
        f"      options: {', '.join(options_of(group))}"
        for group, option, note in groups
    )
    helps = OmegaConf.load(config_dir() / "hydra" / "default.yaml").help
    return (
        f"{helps.header}\nConfig groups (GROUP=OPTION: the current choice, then every option):\n"
        f"{listing}\n\nSettings (KEY=VALUE), as these choices compose them:\n\n"
        f"{annotate(OmegaConf.to_yaml(cfg), notes)}\n\n{helps.footer}"
        "Every value is a Hydra override: lists as [a,b], values with spaces or quotes in quotes."
    )


def app_help(name: str) -> str:
    """`--help`: the app's header, its options as conf/<name>.yaml writes them (with their
    comments, which Hydra's own help drops), and its examples."""
    path = config_dir() / f"{name}.yaml"
    text = path.read_text()
    helps = OmegaConf.load(path).hydra.help
    options, skipping = [], False
    for line in text.splitlines():
        if line and not line[0].isspace():  # a top-level key starts or ends a skipped block
            skipping = line.startswith(("defaults:", "hydra:"))
        if not skipping and not line.startswith("#"):
            options.append(line)
    body = "\n".join(options).strip("\n")
    return (
        f"{helps.header}\nOptions (KEY=VALUE), from {path.name}:\n\n{body}\n\n{helps.footer}\n"
        "Every value is a Hydra override: lists as [a,b], values with spaces or quotes in quotes."
    )
