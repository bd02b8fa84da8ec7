"""The words a model was trained on, stored with the model (its CLIP checkpoint's metadata).

`unclip train clip` records every word of its training captions; a prompt with other words gets a
one-line warning (a small model such as `shapes` silently ignores words it never saw). Models that
carry no vocabulary (Karlo, anything in the diffusers layout) never warn.
"""

import json
import re
from pathlib import Path

_WORD = re.compile(r"[^\W\d_]+(?:'[^\W\d_]+)*")  # letters in any script; "don't" is one word


def words(text: str) -> list[str]:
    """The words of a text, lower-cased, in order (digits and punctuation are not words)."""
    return _WORD.findall(text.lower())


def of_captions(captions) -> list[str]:
    """The sorted vocabulary of a set of captions (what `unclip train clip` stores)."""
    return sorted({w for c in captions for w in words(c)})


def unknown(vocabulary, prompt: str) -> list[str]:
    """Words of the prompt that are not in the vocabulary, each once, in prompt order."""
    known, out = set(vocabulary), []
    for w in words(prompt):
        if w not in known and w not in out:
            out.append(w)
    return out


def read(path: Path, stage: str = "clip") -> list[str] | None:
    """A checkpoint's stored vocabulary, from its header only; None if it has none."""
    from unclip_cli.weights import checkpoint  # torch: only when a model is open anyway

    meta, _ = checkpoint.read_header(Path(path), stage)
    try:
        vocab = json.loads(meta.get("extra") or "{}").get("vocabulary")
    except (ValueError, AttributeError):
        return None
    return [str(w) for w in vocab] if isinstance(vocab, list) else None


def warning(model: str, vocab: list[str], missing: list[str]) -> str:
    """One line for stderr: which words the model does not know, what it does know, where to go instead."""
    shown = ", ".join(f'"{w}"' for w in missing[:8]) + (f" and {len(missing) - 8} more" if len(missing) > 8 else "")
    return (f"model '{model}' was never trained on {shown} and will ignore "
            f"{'it' if len(missing) == 1 else 'them'}; it knows {len(vocab)} words: {', '.join(vocab)}. "
            f"For a general model: `unclip models pull karlo`, then `--model karlo`")
