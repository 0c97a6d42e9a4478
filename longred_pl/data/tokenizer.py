"""Train a small byte-level BPE tokenizer for the demo teacher, saved in Hugging Face format.

Byte-level BPE (the GPT-2 / Llama-3 family) covers every input byte, so no text is ever
unknown. Training with the `tokenizers` library is deterministic for a given document
list and vocabulary size. Special tokens: `<|bos|>` and `<|eos|>`; the pad token is
`<|eos|>` (the fixed-length shards never pad, but batching utilities expect one).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path

from transformers import AutoTokenizer, PreTrainedTokenizerFast

from longred_pl.data.corpora import Document

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

    if vocab_size < MIN_VOCAB_SIZE:
        raise ValueError(f"vocab_size must be >= {MIN_VOCAB_SIZE} (256 bytes + specials)")
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
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"tokenizer directory not found: {path}")
    return AutoTokenizer.from_pretrained(path, local_files_only=True, trust_remote_code=False)
