"""Griffe extension: read sa_clip's numpy-ish reST docstrings as the numpy style mkdocstrings
renders (configured in ``mkdocs.yml``; not part of the package, the docstrings stay as they are).

* ``Main arguments`` / ``Other arguments`` sections become ``Parameters`` / ``Other
  Parameters`` (a parameter table each) and ``Example`` becomes ``Examples``;
* the types of ``name : type`` lines lose their double backticks and are shown as written
  (``tensor (P,)``, not the call ``tensor(P)``);
* a one-line ``name : description`` (a sentence, not a type: it ends with a full stop, holds
  one, starts like a phrase or is long) becomes ``name`` with the description indented below,
  so the Attributes/Parameters tables show it as a description, not as the type;
* reST roles ``:func:`~sa_clip.x``` become inline code ``x``;
* ``.. math::`` directives become ``$$ ... $$`` blocks (pymdownx.arithmatex);
* free text at the left margin inside a parameter-like section (which numpy style would read
  as one more parameter), after a blank line, gets a ``Notes`` header of its own;
* a reST literal-block marker ``text::`` becomes ``text:`` (the indented block after it is a
  code block in Markdown too);
* reST simple tables (``=====  ====`` rules) and doctest lines outside an Examples section
  are fenced, so Markdown does not read ``>>>`` as a quotation or the rules as headings.
"""

from __future__ import annotations

import re
from typing import Any

from griffe import Extension, Object

HEADERS = {"main arguments": "Parameters", "other arguments": "Other Parameters",
           "example": "Examples", "examples": "Examples"}
ROLE = re.compile(r":(?:func|class|meth|mod|attr|data|exc|obj|py:\w+):`(~?)([^`]+)`")
TABLE_RULE = re.compile(r"^\s*=+(\s+=+)+\s*$")
UNDERLINE = re.compile(r"^\s*-{3,}\s*$")
ITEM_SECTIONS = {"parameters", "other parameters", "attributes", "raises"}
PHRASE = re.compile(r"^(the|a|an|its|their|whether|how|what|which|where|number|numbers|"
                    r"distance|fraction of|true|false)\b", flags=re.I)
ITEM = re.compile(r"^\*{0,2}[A-Za-z_(][\w()*, ]*(\s:.*)?$")  # "name : type", "a, b", "name"


def _role(m: re.Match) -> str:
    target = m.group(2)
    return f"`{target.rsplit('.', 1)[-1] if m.group(1) else target}`"


def verbatim(kind: str) -> str:
    """A type as written: a no-break space after each comma and before each bracket keeps griffe
    from reading ``tensor (P,)`` as a call ``tensor(P)`` or ``int, str`` as a tuple ``(int,
    str)`` (it shows what does not parse as Python unchanged); the text looks the same."""
    return kind.replace(", ", ",\u00a0").replace(" (", "\u00a0(")


def is_description(text: str) -> bool:
    """Whether the part after ``name :`` reads as a sentence rather than a type."""
    text = text.strip()
    return (text.endswith(".") or ". " in text or len(text) > 70 or bool(PHRASE.match(text)))


def convert(text: str) -> str:
    lines = ROLE.sub(_role, text).split("\n")
    out: list[str] = []
    i, section = 0, ""
    while i < len(lines):
        line = lines[i]
        nxt = lines[i + 1] if i + 1 < len(lines) else ""
        if line.strip() and UNDERLINE.match(nxt):                   # a numpy section header
            section = line.strip().lower()
            name = HEADERS.get(section, line.strip())
            out += [name, "-" * len(name)]
            i += 2
            continue
        stripped = line.lstrip()
        indent = line[: len(line) - len(stripped)]
        name = HEADERS.get(section, section).lower()
        if (name in ITEM_SECTIONS and stripped and not indent and not ITEM.match(stripped)
                and out and not out[-1].strip() and not UNDERLINE.match(out[-2] if len(out) > 1
                                                                         else "")):
            section = "notes"
            out += ["", "Notes", "-----"]
        if name in ITEM_SECTIONS and not indent and " : " in line:   # "name : type": no ``
            head, _, kind = line.partition(" : ")
            if is_description(kind):                  # "name : a sentence": no type given
                out += [head, "    " + kind.strip()]
                i += 1
                continue
            line = f"{head} : {verbatim(kind.replace('``', ''))}"
        if stripped.startswith(".. math::"):                        # reST math directive
            body = [stripped[len(".. math::"):].strip()]
            i += 1
            while i < len(lines) and (not lines[i].strip() or
                                      len(lines[i]) - len(lines[i].lstrip()) > len(indent)):
                body.append(lines[i].strip())
                i += 1
            out += [indent + "$$", *[indent + b for b in body if b], indent + "$$", ""]
            continue
        if TABLE_RULE.match(line):                                  # reST simple table
            block, rules = [], 0
            while i < len(lines) and rules < 3 and (lines[i].strip() or rules == 0):
                rules += bool(TABLE_RULE.match(lines[i]))
                block.append(lines[i])
                i += 1
            out += [indent + "```text", *block, indent + "```"]
            continue
        if stripped.startswith(">>>") and HEADERS.get(section) != "Examples":
            block = []
            while i < len(lines) and lines[i].strip():
                block.append(lines[i])
                i += 1
            out += [indent + "```pycon", *block, indent + "```"]
            continue
        if stripped.rstrip().endswith("::"):                        # reST literal-block marker
            line = line.rstrip()[:-1] if stripped.strip() != "::" else ""
        out.append(line)
        i += 1
    return "\n".join(out)


class NumpyishDocstrings(Extension):
    """Rewrite every docstring once the package is loaded."""

    def on_package(self, *, pkg: Object, **kwargs: Any) -> None:
        seen: set[int] = set()
        stack = [pkg]
        while stack:
            obj = stack.pop()
            if id(obj) in seen or obj.is_alias:
                continue
            seen.add(id(obj))
            if obj.docstring is not None:
                obj.docstring.value = convert(obj.docstring.value)
            stack.extend(m for m in obj.members.values() if not m.is_alias)
