"""Starting a run from a trained model (``namegen train --init-from CKPT``): the base model, what the
new checkpoint records of it, and its weights carried into the new run's model.

    base = load_base("checkpoints/small/best.ckpt")      # a .ckpt, a converted or a notebook .pth
    carried = transplant(base, model, vocab, names)       # model: the run's fresh GRULanguageModel

The architecture is the base's, so every GRU, LayerNorm and head-input weight is copied as it is.
Only the vocabulary differs: the run's is the list's own characters, sorted, as a run from scratch
on the list has (a model fine-tuned on Cyrillic names writes Cyrillic, never the base's Latin
letters), so ids move. The embedding's and the head's rows are matched by character, never by id:

- a character the base knows keeps its learned rows;
- a new character starts from a related one the base knows (``relative``: its lower case, its
  letter without accents, or its Latin transliteration: ``É`` -> ``é`` -> ``e``, ``ж`` -> ``z``),
  its head bias lowered by the share of that family it has in the list, so that it starts about
  as likely as the list makes it;
- a new character with no relative starts from the mean of the base's character rows.

The rows of the known characters are untouched, so at step 0 the model's probabilities among the
characters both know are exactly the base's (tests/test_finetune.py holds it). The base's letters
that the list never uses are left out. A notebook
model, which started names from padding and never saw ``.`` as an input, gets padding's embedding
row as ``.``'s: the new run starts names where the notebook did.
"""

from __future__ import annotations

import math
import unicodedata
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import torch

from namegen.api import load_model
from namegen.checkpoint import LoadedModel
from namegen.data import END, PAD, Vocab, sha256_of
from namegen.errors import UserError
from namegen.model import GRULanguageModel

#: the rows that depend on the vocabulary; every other weight is copied whole
VOCAB_ROWS = ("embedding.weight", "head.weight", "head.bias")

#: one Latin letter for each Cyrillic and Greek letter (the first letter of its usual
#: transliteration), and for Latin letters that Unicode does not decompose
_LATIN = dict(zip(
    "абвгдеёжзийклмнопрстуфхцчшщыэюяіїєґјљњћђџѓќѕ" "αβγδεζηθικλμνξοπρσςτυφχψω" "æøðþßłđıœ",
    "abvgdeezziiklmnoprstufhccssyeuaiiegjlncddgkz" "abgdezitiklmnxoprsstyfhpo" "aodtsldio",
))


@dataclass
class Base:
    """The model a run starts from, and where it came from."""

    loaded: LoadedModel
    path: Path
    sha256: str

    def record(self) -> dict:
        """What the new checkpoint keeps of its base (``meta["base"]``): plain types only."""
        meta = self.loaded.meta
        return {"path": str(self.path.resolve()), "sha256": self.sha256, "size": self.loaded.size,
                "data": dict(meta.get("data") or {}), "vocab": list(self.loaded.vocab.chars),
                "from_notebook": self.loaded.from_notebook, "wandb_run_id": meta.get("wandb_run_id")}


def load_base(path: str | Path) -> Base:
    """Read the base model of ``--init-from``: any model file ``namegen sample`` reads. UserErrors are
    about ``"init_from"``."""
    path = Path(path)
    try:
        loaded = load_model(path)
    except UserError as exc:
        raise UserError(str(exc), about="init_from") from None
    return Base(loaded=loaded, path=path, sha256=sha256_of(path))


def relative(char: str, known: set[str]) -> str | None:
    """A character of ``known`` that ``char`` can start from, or None: its lower case, then its base
    letter without accents, then its Latin transliteration (each tried on the lower case)."""
    low = char.lower() if len(char.lower()) == 1 else char
    stripped = unicodedata.normalize("NFKD", low)[0]
    for candidate in (low, stripped, _LATIN.get(low), _LATIN.get(stripped)):
        if candidate and candidate != char and candidate in known:
            return candidate
    return None


@dataclass
class Carried:
    """What ``transplant`` did with each character of the run's vocabulary."""

    kept: list[str] = field(default_factory=list)  # known to the base: its rows
    related: dict[str, str] = field(default_factory=dict)  # new: started from this known character
    fresh: list[str] = field(default_factory=list)  # new, no relative: the mean of the base's rows
    dropped: list[str] = field(default_factory=list)  # the base's, never in the list: left out

    def summary(self) -> str:
        """One line for the start of the run."""
        line = f"{len(self.kept)} characters keep the base's rows"
        if self.related:
            pairs = ", ".join(f"{c} from {r}" for c, r in list(self.related.items())[:8])
            more = ", ..." if len(self.related) > 8 else ""
            line += f"; {len(self.related)} new start from a related one ({pairs}{more})"
        if self.fresh:
            line += f"; {len(self.fresh)} new start from the average ({''.join(self.fresh)})"
        if self.dropped:
            shown = "".join(self.dropped[:30]) + ("..." if len(self.dropped) > 30 else "")
            line += f"; {len(self.dropped)} of the base's, never in the list, are left out ({shown})"
        return line


@torch.no_grad()
def transplant(base: Base, model: GRULanguageModel, vocab: Vocab, names: list[str]) -> Carried:
    """Copy ``base``'s weights into ``model`` (same architecture, vocabulary ``vocab``), rows by character.
    ``names`` (as the model learns them) set the new characters' starting likelihood."""
    source = base.loaded.model.state_dict()
    target = model.state_dict()
    for key, tensor in target.items():
        if key in VOCAB_ROWS:
            continue
        if source[key].shape != tensor.shape:
            raise UserError(f"{base.path}: its {key} has shape {tuple(source[key].shape)}, the run's model "
                            f"{tuple(tensor.shape)}", about="init_from")
        tensor.copy_(source[key])
    carried = _carry_rows(base, source, target, vocab, Counter("".join(names)))
    model.load_state_dict(target)
    return carried


def _carry_rows(base: Base, source: dict, target: dict, vocab: Vocab, counts: Counter) -> Carried:
    """Fill the embedding's and head's rows of ``target`` (vocabulary ``vocab``) from ``source``."""
    old = base.loaded.vocab
    emb, w, b = (source[k] for k in VOCAB_ROWS)
    chars = slice(2, len(old))  # the base's character rows (0 is padding, 1 is '.')
    new_emb, new_w, new_b = (target[k] for k in VOCAB_ROWS)
    for token in (PAD, END):
        new_emb[token], new_w[token], new_b[token] = emb[token], w[token], b[token]
    if base.loaded.start_token == PAD:  # a notebook model: names start from padding's row
        new_emb[END] = emb[PAD]
    carried = Carried()
    for char, i in vocab.stoi.items():
        if char in old.stoi:
            j = old.stoi[char]
            new_emb[i], new_w[i], new_b[i] = emb[j], w[j], b[j]
            carried.kept.append(char)
        elif (rel := relative(char, set(old.chars))) is not None:
            j = old.stoi[rel]
            share = counts[char] / max(counts[char] + counts[rel], 1)  # of the family char + rel in the list
            new_emb[i], new_w[i] = emb[j], w[j]
            new_b[i] = b[j] + math.log(max(share, 1e-3))
            carried.related[char] = rel
        else:
            new_emb[i], new_w[i], new_b[i] = emb[chars].mean(0), w[chars].mean(0), b[chars].mean()
            carried.fresh.append(char)
    carried.dropped = [c for c in old.chars if c not in vocab.stoi]
    return carried
