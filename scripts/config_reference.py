"""Write docs/reference/config.md: every config group, option and key with its default, type and meaning.

The meanings come from the configs themselves: a key's trailing YAML comment (continued on the following
comment lines indented under it), or else the comment block right above it; keys of the structured schemas
(``TrainerConfig``, ``PathsConfig`` in ``unet_train/config.py``) take the comment on their dataclass field when
the YAML has none. Recipe groups (experiments, sweeps, Hydra settings) are listed with their header comment.

    python scripts/config_reference.py            # rewrite docs/reference/config.md
    python scripts/config_reference.py --check    # exit 1 if it is stale or a key has no description
"""

from __future__ import annotations

import argparse
import ast
import io
import re
import sys
import tokenize
from dataclasses import dataclass
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"
OUTPUT = REPO / "docs" / "reference" / "config.md"
# Groups whose options are whole recipes: documented by their header comment, not key by key.
RECIPE_GROUPS = ("experiment", "hparams_search", "hydra")
# Keys that are Hydra's or instantiation's machinery, described once at the top of the page.
MACHINERY = {"defaults", "hydra", "_partial_", "_target_", "_convert_", "_recursive_"}
# The root configs and the command each one configures.
ROOTS = {
    "train": "unet-train",
    "eval": "unet-eval",
    "predict": "unet-predict",
    "plan": "unet-plan",
    "export": "unet-export",
}
KEY = re.compile(r"^(?P<indent> *)(?P<key>[A-Za-z_][\w]*):(?P<rest>.*)$")


@dataclass
class Key:
    """One documented key of an option file."""

    name: str  # dotted within the file (``trainer.device``)
    default: str
    type: str
    meaning: str


def _split_comment(text: str) -> tuple[str, str]:
    """Split ``value  # comment`` outside quotes into (value, comment)."""
    quote = ""
    for i, char in enumerate(text):
        if char in "'\"" and not quote:
            quote = char
        elif char == quote:
            quote = ""
        elif char == "#" and not quote and (i == 0 or text[i - 1] in " \t"):
            return text[:i].strip(), text[i + 1 :].strip()
    return text.strip(), ""


def _type_of(value: str) -> str:
    if value == "???":
        return "mandatory"
    if value.startswith("${"):
        return "interpolation"
    try:
        parsed = yaml.safe_load(value) if value else None
    except yaml.YAMLError:
        return "str"
    if parsed is None:
        return "null" if value else "map"
    return {bool: "bool", int: "int", float: "float", str: "str", list: "list", dict: "map"}.get(type(parsed), "str")


def _parses(value: str) -> bool:
    try:
        yaml.safe_load(value)
    except yaml.YAMLError:
        return False
    return True


def header(lines: list[str]) -> str:
    """The file's first comment block (its description), without ``@package`` lines."""
    out: list[str] = []
    for line in lines:
        stripped = line.strip()
        if not stripped.startswith("#"):
            break
        text = stripped.lstrip("#").strip()
        if not text.startswith("@package"):
            out.append(text)
    return " ".join(t for t in out if t)


def parse_keys(lines: list[str]) -> list[Key]:
    """The keys of one YAML option file with their defaults and comments (machinery and object nodes skipped)."""
    keys: list[Key] = []
    stack: list[tuple[int, str, bool]] = []  # (indent, key, is an object node or skipped subtree)
    above: list[str] = []
    in_header = True
    i = 0
    while i < len(lines):
        line = lines[i]
        stripped = line.strip()
        if not stripped:
            above, in_header = [], False
            i += 1
            continue
        if stripped.startswith("#"):
            if not in_header:
                above.append(stripped.lstrip("#").strip())
            i += 1
            continue
        in_header = False
        match = KEY.match(line)
        if not match or stripped.startswith("- "):
            if stripped.startswith("-"):  # a list item: what is under it belongs to the list, not to its parent
                dash = len(line) - len(line.lstrip())
                while stack and stack[-1][0] >= dash:
                    stack.pop()
                stack.append((dash, "-", True))
            above = []
            i += 1
            continue
        indent, name = len(match["indent"]), match["key"]
        while stack and stack[-1][0] >= indent:
            stack.pop()
        skipped = bool(stack and stack[-1][2])
        value, comment = _split_comment(match["rest"])
        j = i + 1
        # A flow list or map written over several lines ([1,\n 2]): its value is all of them.
        while value[:1] in "[{" and value and not _parses(value) and j < len(lines):
            more, more_comment = _split_comment(lines[j])
            value, comment = f"{value} {more}", comment or more_comment
            j += 1
        # Continuation lines: comment-only lines indented past the key (aligned under its comment).
        meaning = [comment] if comment else []
        while (
            comment
            and j < len(lines)
            and lines[j].strip().startswith("#")
            and (len(lines[j]) - len(lines[j].lstrip()) > indent)
        ):
            meaning.append(lines[j].strip().lstrip("#").strip())
            j += 1
        if not meaning:
            meaning = above
        # A map whose children build an object (a _target_ among them) or a block scalar is one entry.
        child_lines = []
        k = j
        while k < len(lines) and (not lines[k].strip() or len(lines[k]) - len(lines[k].lstrip()) > indent):
            child_lines.append(lines[k])
            k += 1
        is_object = any(re.match(r"^\s*_target_:", c) for c in child_lines) and not value
        block = value in ("|", ">", "|-", ">-")
        items = [c.strip() for c in child_lines if c.strip() and not c.strip().startswith("#")]
        block_list = not value and bool(items) and items[0].startswith("-") and not is_object
        dotted = ".".join([s[1] for s in stack] + [name])
        skip_subtree = skipped or name in MACHINERY or is_object or block or block_list
        if not skipped and name not in MACHINERY and block_list:
            shown = yaml.safe_dump(yaml.safe_load("\n".join([line, *child_lines]))[name], default_flow_style=True)
            keys.append(Key(dotted, shown.strip(), "list", " ".join(meaning)))
        elif not skipped and name not in MACHINERY and (value or is_object or block or not child_lines):
            shown = "(object)" if is_object else ("(text)" if block else value)
            keys.append(Key(dotted, shown, "object" if is_object else _type_of(value), " ".join(meaning)))
        elif not skipped and name not in MACHINERY and child_lines and not meaning:
            pass  # a plain map: its children are documented one by one
        elif not skipped and name not in MACHINERY and child_lines:
            keys.append(Key(dotted, "(map)", "map", " ".join(meaning)))
        stack.append((indent, name, skip_subtree))
        above = []
        i = j
    return keys


def schema_comments() -> dict[str, dict[str, tuple[str, str, str]]]:
    """``{schema group: {field: (default, type, comment)}}`` read from the dataclasses in unet_train/config.py."""
    source = (REPO / "unet_train" / "config.py").read_text()
    comments = {
        tok.start[0]: tok.string.lstrip("#").strip()
        for tok in tokenize.generate_tokens(io.StringIO(source).readline)
        if tok.type == tokenize.COMMENT
    }
    groups = {"TrainerConfig": "trainer", "PathsConfig": "paths"}
    out: dict[str, dict[str, tuple[str, str, str]]] = {}
    for node in ast.parse(source).body:
        if isinstance(node, ast.ClassDef) and node.name in groups:
            fields = out.setdefault(groups[node.name], {})
            for item in node.body:
                if isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name) and item.value is not None:
                    fields[item.target.id] = (
                        ast.unparse(item.value),
                        ast.unparse(item.annotation),
                        comments.get(item.lineno, ""),
                    )
    return out


def collect() -> tuple[list[tuple[str, str, str, list[Key]]], list[str]]:
    """Every option as (group, option, description, keys), and the keys without a description."""
    schemas = schema_comments()
    options: list[tuple[str, str, str, list[Key]]] = []
    missing: list[str] = []
    for path in sorted(CONFIGS.rglob("*.yaml")):
        rel = path.relative_to(CONFIGS)
        group = str(rel.parent) if rel.parent != Path(".") else ""
        lines = path.read_text().splitlines()
        description = header(lines)
        if not description:
            missing.append(f"{rel}: no header comment saying what the option is")
        if group.split("/")[0] in RECIPE_GROUPS:
            options.append((group, path.stem, description, []))
            continue
        keys = parse_keys(lines)
        schema = schemas.get(group.split("/")[0], {})
        for key in keys:
            # a schema field set here, or under trainer./paths. in a root config, takes the field's comment
            head, _, field = key.name.partition(".")
            fallback = schema.get(key.name) or (schemas.get(head, {}).get(field) if not group else None)
            if not key.meaning and fallback:
                key.meaning = fallback[2]
            if not key.meaning:
                missing.append(f"{rel}: {key.name}")
        if schema:  # schema fields the option leaves at their defaults
            listed = {k.name for k in keys}
            for name, (default, annotation, comment) in schema.items():
                if name not in listed:
                    keys.append(Key(name, default, annotation, comment))
                    if not comment:
                        missing.append(f"unet_train/config.py: {group}.{name}")
        options.append((group, path.stem, description, keys))
    return options, sorted(set(missing))


def render(options: list[tuple[str, str, str, list[Key]]]) -> str:
    out = [
        "# All configuration keys",
        "",
        "Generated from `configs/` by `python scripts/config_reference.py` (a test fails when it is stale or a",
        "key has no description). Pick an option of a group on the command line (`model=attention`) and override",
        "any key (`model.base_channels=32`, `trainer.max_time=600`); `unet-train --cfg job` prints the composed",
        "config. `_target_` names the class an option builds and `_partial_: true` builds it later with its",
        "parameters (optimizers, schedules); `defaults:` lists the groups an option pulls in.",
        "",
    ]
    by_group: dict[str, list[tuple[str, str, list[Key]]]] = {}
    for group, option, description, keys in options:
        by_group.setdefault(group, []).append((option, description, keys))
    for group in sorted(by_group, key=lambda g: (g != "", g)):
        title = "Root configs (one per command)" if group == "" else f"`{group}`"
        out += [f"## {title}", ""]
        for option, description, keys in by_group[group]:
            name = f"{option}.yaml ({ROOTS[option]})" if group == "" and option in ROOTS else f"{group}={option}"
            out += [f"### `{name}`", "", description or "", ""]
            if keys:
                out += ["| key | default | type | meaning |", "|---|---|---|---|"]
                for key in keys:
                    cell = key.default.replace("|", "\\|")
                    meaning = key.meaning.replace("|", "\\|")
                    out.append(f"| `{key.name}` | `{cell}` | {key.type} | {meaning} |")
                out.append("")
    return "\n".join(out).rstrip() + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail if the page is stale or a key is undocumented")
    args = parser.parse_args()
    options, missing = collect()
    text = render(options)
    if missing:
        print("Keys without a description (add a comment in the YAML or on the schema field):", file=sys.stderr)
        print("\n".join(f"  {m}" for m in missing), file=sys.stderr)
    if args.check:
        stale = not OUTPUT.is_file() or OUTPUT.read_text() != text
        if stale:
            print(f"{OUTPUT.relative_to(REPO)} is stale: run python scripts/config_reference.py", file=sys.stderr)
        return 1 if stale or missing else 0
    OUTPUT.write_text(text)
    print(f"wrote {OUTPUT.relative_to(REPO)}")
    return 1 if missing else 0


if __name__ == "__main__":
    sys.exit(main())
