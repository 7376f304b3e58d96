"""Messages point somewhere real: every command-line flag a string in swiftdet suggests exists on
the verb that prints it (or on the verb the message names), and every config key it names exists.
(Issue 16, "hints that point nowhere": messages suggested --allow-pickle where no such flag was.)"""
from __future__ import annotations

import argparse
import ast
import re
from pathlib import Path

import swiftdet
from swiftdet.cli.main import COMMANDS, build_parser
from swiftdet.config.core import _all_keys
from swiftdet.config.schema import Config

PACKAGE = Path(swiftdet.__file__).resolve().parent
FLAG = re.compile(r"(?<![\w-])--[a-z][a-z0-9-]*")
VERB_THEN_FLAGS = re.compile(r"swiftdet ([a-z][a-z-]*)((?:[^.;:!?\n]|\.\.\.|\.(?=\w))*)")
# A key a message tells the user to set: `key=value` (an override) or `cfg.key` (a .py config).
CONFIG_KEY = re.compile(r"(?<![\w./])(?:cfg\.((?:model|input|data|solver|test)\.[a-z_][a-z0-9_.]*[a-z0-9_])"
                        r"|((?:model|input|data|solver|test)\.[a-z_][a-z0-9_.]*[a-z0-9_])(?==))")


def _verb_flags() -> dict[str, set[str]]:
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return {verb: {o for a in p._actions for o in a.option_strings} | {"--help"} for verb, p in sub.choices.items()}


def _strings(path: Path) -> list[tuple[int, str]]:
    """(line, text) of every string constant of a module, f-strings' literal parts joined."""
    out = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.JoinedStr):
            out.append((node.lineno, "".join(v.value if isinstance(v, ast.Constant) else "{}" for v in node.values)))
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            out.append((node.lineno, node.value))
    return out


def _modules_of_verbs() -> dict[Path, str]:
    return {Path(m.__file__).resolve(): m.NAME for m in COMMANDS}


def test_every_suggested_flag_exists_where_it_is_suggested():
    flags = _verb_flags()
    every = set().union(*flags.values())
    own_verb = _modules_of_verbs()
    wrong = []
    for path in sorted(PACKAGE.rglob("*.py")):
        verb = own_verb.get(path.resolve())
        for line, text in _strings(path):
            where = f"{path.relative_to(PACKAGE.parent)}:{line}"
            named = set()
            for m in VERB_THEN_FLAGS.finditer(text):
                if m.group(1) in flags:
                    for flag in FLAG.findall(m.group(2)):
                        named.add(flag)
                        if flag not in flags[m.group(1)]:
                            wrong.append(f"{where}: 'swiftdet {m.group(1)}' has no {flag}")
            for flag in set(FLAG.findall(text)) - named:
                allowed = flags[verb] if verb else every
                if flag not in allowed:
                    wrong.append(f"{where}: {flag} is not a flag of {'swiftdet ' + verb if verb else 'any verb'}")
    assert not wrong, "\n".join(wrong)


def test_every_config_key_a_message_names_exists():
    keys = set(_all_keys(Config))
    wrong = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for line, text in _strings(path):
            for key in (a or b for a, b in CONFIG_KEY.findall(text)):
                if "{}" in key or path.name == "types.py":  # a key filled in at run time; types.py's typo example
                    continue
                if key not in keys and not any(k.startswith(key + ".") for k in keys):
                    wrong.append(f"{path.relative_to(PACKAGE.parent)}:{line}: no config key '{key}'")
    assert not wrong, "\n".join(wrong)
