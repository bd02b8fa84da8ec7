"""Where a run's prompts come from and which of them it refuses, before any model loads.

`read_prompts_file`: one prompt a line (`-` = standard input); blank lines and lines starting with
`#` are skipped; a bad line is set aside with its line number and a reason while the others run.
`Guidelines`: an optional list of words and phrases (one a line, `#` comments); a prompt that
contains one, case-insensitively and as whole words, is refused. No torch here.
"""

import re
import sys
import unicodedata
from dataclasses import dataclass
from pathlib import Path

from unclip_cli.errors import UnclipError
from unclip_cli.weights.spec import unclip_home

MAX_LINE = 1000  # characters; a longer line in a prompts file is taken for a mistake (CLIP reads ~77 tokens)
GUIDELINES_NAME = "guidelines.txt"  # in $UNCLIP_HOME: on for every run when present


@dataclass(frozen=True)
class Prompt:
    text: str
    index: int  # position among the file's prompts (bad ones included): seeds advance by this
    line: int | None = None  # line number in the prompts file


@dataclass(frozen=True)
class Skipped:
    line: int | None
    reason: str
    text: str = ""


def _line_problem(text: str) -> str | None:
    if len(text) > MAX_LINE:
        return f"the line is {len(text)} characters long (at most {MAX_LINE})"
    if bad := [c for c in text if unicodedata.category(c) in ("Cc", "Cs")]:
        return f"the line contains a control character ({ascii(bad[0])})"
    return None


def _read_bytes(source: str | Path) -> tuple[bytes, str]:
    if str(source) == "-":
        return sys.stdin.buffer.read(), "standard input"
    path = Path(source)
    try:
        return path.read_bytes(), str(path)
    except FileNotFoundError:
        raise UnclipError(f"prompts file {path} does not exist") from None
    except IsADirectoryError:
        raise UnclipError(f"prompts file {path} is a folder") from None
    except OSError as e:
        raise UnclipError(f"prompts file {path} cannot be read ({e.strerror or e})") from None


def read_prompts_file(source: str | Path) -> tuple[list[Prompt], list[Skipped], str]:
    """(prompts, bad lines, name of the source). Raises if the file holds no usable prompt."""
    data, name = _read_bytes(source)
    prompts, bad, index = [], [], 0
    for number, raw in enumerate(data.splitlines(), 1):
        try:
            text = raw.decode("utf-8").lstrip("\ufeff").strip()  # a byte-order mark, if an editor wrote one
        except UnicodeDecodeError:
            text, problem = None, "the line is not UTF-8 text"
        else:
            if not text or text.startswith("#"):
                continue
            problem = _line_problem(text)
        if problem:
            bad.append(Skipped(number, problem))
        else:
            prompts.append(Prompt(text, index, number))
        index += 1
    if not prompts:
        why = f"; {len(bad)} bad line(s), the first: line {bad[0].line}: {bad[0].reason}" if bad else ""
        raise UnclipError(f"prompts file {name} holds no prompt{why}")
    return prompts, bad, name


def _normal(text: str) -> str:
    return unicodedata.normalize("NFKC", text).casefold()


class Guidelines:
    """Terms a prompt must not contain (whole words, any case, any run of spaces between words)."""

    def __init__(self, terms: list[str], source: str):
        self.terms, self.source = terms, source
        self._patterns = [re.compile(r"(?<!\w)" + r"\s+".join(map(re.escape, t.split())) + r"(?!\w)")
                          for t in map(_normal, terms)]

    @classmethod
    def load(cls, path: Path) -> "Guidelines":
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise UnclipError(f"guidelines file {path} does not exist") from None
        except (OSError, UnicodeDecodeError) as e:
            raise UnclipError(f"guidelines file {path} cannot be read ({getattr(e, 'strerror', None) or e})") from None
        terms = [t.strip() for t in text.splitlines()]
        return cls([t for t in terms if t and not t.startswith("#")], str(path))

    def match(self, prompt: str) -> str | None:
        """The first term the prompt contains, or None."""
        normal = _normal(prompt)
        return next((t for t, p in zip(self.terms, self._patterns) if p.search(normal)), None)


def find_guidelines(option: Path | None) -> Guidelines | None:
    """--guidelines FILE, else $UNCLIP_HOME/guidelines.txt if it exists, else None (the default: off)."""
    if option is not None:
        return Guidelines.load(Path(option))
    path = unclip_home() / GUIDELINES_NAME
    return Guidelines.load(path) if path.is_file() else None
