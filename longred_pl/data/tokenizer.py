"""Tokenizers: train the demo teacher's byte-level BPE, load one offline, tokenise documents.

Byte-level BPE (the GPT-2 / Llama-3 family) covers every input byte, so no text is ever
unknown. Training with the `tokenizers` library is deterministic for a given document
list and vocabulary size. Special tokens: `<|bos|>` and `<|eos|>`; the pad token is
`<|eos|>` (the fixed-length shards never pad, but batching utilities expect one).

`tokenize_documents` and `tokenize_items` turn documents into token ids in batches (a fast
tokenizer runs a batch in parallel), streamed, for `longred_pl.data.prepare`.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from itertools import islice
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import numpy as np

from longred_pl.data.documents import Document
from longred_pl.data.sources import Item, TokenizedDocument
from longred_pl.errors import UserError

if TYPE_CHECKING:  # transformers is imported where it is used (it takes seconds to import)
    from transformers import PreTrainedTokenizerFast

BOS_TOKEN = "<|bos|>"
EOS_TOKEN = "<|eos|>"
SPECIAL_TOKENS: tuple[str, ...] = (BOS_TOKEN, EOS_TOKEN)
MIN_VOCAB_SIZE = 256 + len(SPECIAL_TOKENS)  # every byte, plus the special tokens


def _texts(documents: Iterable[Document]) -> Iterator[str]:
    for document in documents:
        yield document.text


def train_tokenizer(
    documents: Iterable[Document], vocab_size: int, out_dir: str | Path
) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE tokenizer on `documents` and `save_pretrained` it to `out_dir`.

    Args:
        documents: training text; order matters only for determinism, not for the result.
        vocab_size: total vocabulary size including the 256 byte tokens and the two
            special tokens (ids 0 and 1).
        out_dir: directory that `AutoTokenizer.from_pretrained(out_dir)` reloads offline.

    Returns:
        The trained tokenizer, as reloaded from `out_dir`.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    if vocab_size < MIN_VOCAB_SIZE:
        raise UserError(
            f"vocab_size must be >= {MIN_VOCAB_SIZE} (256 bytes + specials), got {vocab_size}"
        )
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(_texts(documents), trainer=trainer)
    wrapped = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, bos_token=BOS_TOKEN, eos_token=EOS_TOKEN, pad_token=EOS_TOKEN
    )
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    wrapped.save_pretrained(out_dir)
    return load_tokenizer(out_dir)


def load_tokenizer(path: str | Path) -> PreTrainedTokenizerFast:
    """Load a tokenizer directory offline (no hub access, no remote code)."""
    from transformers import AutoTokenizer

    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"tokenizer directory not found: {path}")
    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True, trust_remote_code=False)
    return cast("PreTrainedTokenizerFast", tokenizer)


# --- tokenising documents ----------------------------------------------------------------

TOKENIZE_BATCH = 64


def _encode(batch: list[Document], tokenizer: Any, eos: int | None) -> list[np.ndarray]:
    encoded = tokenizer([d.text for d in batch], add_special_tokens=False)["input_ids"]
    tail = [] if eos is None else [eos]
    return [np.asarray([*ids, *tail], dtype=np.int64) for ids in encoded]


def eos_id(tokenizer: Any, append_eos: bool = True) -> int | None:
    """The id appended to each document (None when `append_eos` is False)."""
    if append_eos and tokenizer.eos_token_id is None:
        raise UserError("the tokenizer has no eos_token; set one, or pass append_eos=False")
    return tokenizer.eos_token_id if append_eos else None


def tokenize_documents(
    documents: Iterable[Document],
    tokenizer: Any,
    batch_size: int = TOKENIZE_BATCH,
    append_eos: bool = True,
    progress: bool = True,
) -> Iterator[TokenizedDocument]:
    """Tokenise documents in batches (fast tokenizers run a batch in parallel).

    Args:
        documents: the documents, in output order (any iterable; streamed).
        tokenizer: a Hugging Face tokenizer; no special tokens are added except EOS.
        batch_size: documents per tokenizer call.
        append_eos: append `tokenizer.eos_token_id` to every document, so packed
            samples show the model where one document ends.
        progress: show a tqdm bar counting documents.
    """
    from tqdm.auto import tqdm

    eos = eos_id(tokenizer, append_eos)
    total = len(documents) if isinstance(documents, Sequence) else None
    iterator = iter(documents)
    with tqdm(total=total, desc="tokenize", unit="doc", disable=not progress) as bar:
        while batch := list(islice(iterator, batch_size)):
            for document, ids in zip(batch, _encode(batch, tokenizer, eos), strict=True):
                yield TokenizedDocument(document.name, ids)
            bar.update(len(batch))


def tokenize_items(
    items: Iterable[Item], tokenizer: Any, eos: int | None, batch_size: int = TOKENIZE_BATCH
) -> Iterator[TokenizedDocument]:
    """Texts tokenised in batches (EOS `eos` appended), token-id documents passed through.

    Order is kept. A blank text becomes an empty document (no EOS), which the `empty`
    filter of `longred prepare` drops and counts.
    """
    pending: list[Document] = []

    def flush() -> Iterator[TokenizedDocument]:
        texts = [d for d in pending if d.text.strip()]
        encoded = iter(_encode(texts, tokenizer, eos) if texts else [])
        for document in pending:
            ids = next(encoded) if document.text.strip() else np.zeros(0, dtype=np.int64)
            yield TokenizedDocument(document.name, ids)
        pending.clear()

    for item in items:
        if isinstance(item, TokenizedDocument):
            yield from flush()
            yield item
        else:
            pending.append(item)
            if len(pending) == batch_size:
                yield from flush()
    yield from flush()
