"""Build the demo teacher: a small Llama trained from scratch on embedded text, short window.

LongReD (docs/method.md) needs a *trained* original model: its short-text behaviour is what
the student must keep, so random weights would make every distillation figure
meaningless. The demo teacher is a ~1M-parameter `LlamaForCausalLM` trained in a few
CPU minutes on the embedded corpora (`longred_pl.demo.corpora`) with a 256-token window;
`config.max_position_embeddings == window` records the trained window `T`, so the
student's `4 * T` is the long window.

Steps, top to bottom in `build_teacher`: train a byte-level BPE tokenizer on the train
split, tokenise and pack the text into `window`-token rows, train with AdamW and a
warmup + cosine schedule, measure train and held-out perplexity per corpus, save the
model (safetensors), tokenizer, `recipe.json` and `metrics.json`. A directory that
already holds a complete teacher built from the same recipe is reused.

Shape suffixes: N = rows, B = batch, T = window tokens.
"""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from longred_pl.data.documents import Document
from longred_pl.demo.corpora import CORPORA, load_corpus
from longred_pl.errors import UserError

RECIPE_FILE = "recipe.json"
METRICS_FILE = "metrics.json"  # written last: its presence marks a complete teacher
REQUIRED_FILES = ("config.json", "model.safetensors", "tokenizer.json", RECIPE_FILE, METRICS_FILE)


@dataclass(frozen=True)
class TeacherRecipe:
    """Every knob of the teacher build; the defaults are the demo teacher."""

    corpora: tuple[str, ...] = ("shakespeare",)
    """Embedded corpora (`longred_pl.demo.corpora.CORPORA`) trained on, train split."""
    corpus_max_bytes: int | None = None
    """Cap on the text read per corpus and split (None: all of it); tests use a small cap."""
    vocab_size: int = 2048
    """Byte-level BPE vocabulary size, special tokens included."""
    hidden_size: int = 128
    num_layers: int = 4
    num_heads: int = 4
    num_kv_heads: int = 2
    """Fewer key/value heads than query heads (GQA), as in Llama-3."""
    intermediate_size: int = 384
    window: int = 256
    """Training window T; becomes `config.max_position_embeddings`."""
    rope_theta: float = 10000.0
    batch_size: int = 16
    """Rows of `window` tokens per optimizer step."""
    steps: int = 700
    lr: float = 3e-3
    min_lr_ratio: float = 0.1
    """Cosine decay ends at `lr * min_lr_ratio`."""
    warmup: int = 50
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    seed: int = 0
    tie_word_embeddings: bool = True
    eval_rows: int = 256
    """Rows per corpus (evenly spaced) used to measure train and validation loss."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "corpora", tuple(self.corpora))
        positive = ("vocab_size", "hidden_size", "num_layers", "num_heads", "num_kv_heads")
        positive += ("intermediate_size", "window", "batch_size", "steps", "eval_rows")
        for name in positive:
            if getattr(self, name) <= 0:
                raise UserError(f"recipe.{name} must be > 0, got {getattr(self, name)}")
        unknown = [name for name in self.corpora if name not in CORPORA]
        if not self.corpora or unknown:
            raise UserError(
                f"recipe.corpora must name known corpora {sorted(CORPORA)}, "
                f"got {list(self.corpora)}"
            )
        if self.hidden_size % self.num_heads or self.num_heads % self.num_kv_heads:
            raise UserError(
                "recipe.hidden_size must divide by num_heads, and num_heads by num_kv_heads"
            )
        if not 0 <= self.warmup < self.steps:
            raise UserError("recipe.warmup must be >= 0 and < recipe.steps")

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TeacherRecipe:
        """Build from a dict (JSON/YAML); unknown keys are an error that names them."""
        unknown = set(values) - {field.name for field in dataclasses.fields(cls)}
        if unknown:
            raise UserError(f"unknown teacher recipe keys: {sorted(unknown)}")
        return cls(**values)

    @classmethod
    def from_file(cls, path: str | Path) -> TeacherRecipe:
        """Load a recipe from YAML or JSON (keys = field names)."""
        import yaml

        values = yaml.safe_load(Path(path).read_text()) or {}
        if not isinstance(values, dict):
            raise UserError(f"{path}: a teacher recipe must be a mapping of field: value")
        return cls.from_dict(values)

    def to_dict(self) -> dict[str, Any]:
        values = dataclasses.asdict(self)
        values["corpora"] = list(self.corpora)
        return values


def teacher_config(recipe: TeacherRecipe, tokenizer: Any) -> Any:
    """The `LlamaConfig` of the teacher; its trained window is `max_position_embeddings`."""
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=recipe.vocab_size,
        hidden_size=recipe.hidden_size,
        intermediate_size=recipe.intermediate_size,
        num_hidden_layers=recipe.num_layers,
        num_attention_heads=recipe.num_heads,
        num_key_value_heads=recipe.num_kv_heads,
        max_position_embeddings=recipe.window,
        rope_parameters={"rope_type": "default", "rope_theta": recipe.rope_theta},
        tie_word_embeddings=recipe.tie_word_embeddings,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )


def pack_rows(token_docs: Sequence[np.ndarray], window: int) -> torch.Tensor:
    """Concatenate documents (each ending with EOS) and cut `[N, window]` rows."""
    stream = np.concatenate(list(token_docs)) if token_docs else np.zeros(0, np.int64)
    rows = len(stream) // window
    return torch.from_numpy(stream[: rows * window].astype(np.int64)).view(rows, window)


def spread(rows_NT: torch.Tensor, count: int) -> torch.Tensor:
    """At most `count` rows, evenly spaced, so evaluation covers every document."""
    if len(rows_NT) <= count:
        return rows_NT
    return rows_NT[torch.linspace(0, len(rows_NT) - 1, count).long()]


def make_optimizer(model: torch.nn.Module, recipe: TeacherRecipe) -> torch.optim.Optimizer:
    """AdamW; matrices decay, norm weights do not."""
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in params if p.ndim >= 2], "weight_decay": recipe.weight_decay},
        {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=recipe.lr, betas=(0.9, 0.95))


def lr_factor(step: int, recipe: TeacherRecipe) -> float:
    """Linear warmup to 1, then cosine decay to `min_lr_ratio` at `steps`."""
    if step < recipe.warmup:
        return (step + 1) / recipe.warmup
    progress = (step - recipe.warmup) / max(1, recipe.steps - recipe.warmup)
    cosine = 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))
    return recipe.min_lr_ratio + (1 - recipe.min_lr_ratio) * cosine


def batches(rows_NT: torch.Tensor, batch_size: int, generator: torch.Generator):
    """Endless shuffled batches `[B, T]`: a fresh permutation per epoch, last partial dropped."""
    if len(rows_NT) < batch_size:
        raise UserError(
            f"only {len(rows_NT)} training rows for batch_size={batch_size}; "
            "add text (corpus_max_bytes) or lower batch_size/window"
        )
    while True:
        order = torch.randperm(len(rows_NT), generator=generator)
        for start in range(0, len(order) - batch_size + 1, batch_size):
            yield rows_NT[order[start : start + batch_size]]


def train(
    model: torch.nn.Module,
    rows_NT: torch.Tensor,
    recipe: TeacherRecipe,
    progress: bool = True,
    after_step: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """Train `model` for `recipe.steps` steps on `rows_NT`; returns losses, time, tokens.

    `after_step(steps_done)` runs after every optimizer step (the learning curve); its time
    is not counted in `train_seconds`.
    """
    from tqdm.auto import tqdm

    generator = torch.Generator().manual_seed(recipe.seed)
    optimizer = make_optimizer(model, recipe)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, recipe))
    model.train()
    losses: list[float] = []
    start = time.perf_counter()
    bar = tqdm(range(recipe.steps), desc="teacher", unit="step", disable=not progress)
    data = batches(rows_NT, recipe.batch_size, generator)
    for step in bar:
        input_ids_BT = next(data)
        loss = model(input_ids=input_ids_BT, labels=input_ids_BT).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), recipe.grad_clip)
        optimizer.step()
        schedule.step()
        losses.append(loss.item())
        if after_step is not None:
            paused = time.perf_counter()
            after_step(step + 1)
            start += time.perf_counter() - paused
        if step % 10 == 0 or step == recipe.steps - 1:
            rate = (step + 1) * input_ids_BT.numel() / (time.perf_counter() - start)
            bar.set_postfix(loss=f"{losses[-1]:.3f}", tok_s=f"{rate:.0f}")
    seconds = time.perf_counter() - start
    tokens = recipe.steps * recipe.batch_size * recipe.window
    return {
        "losses": losses,
        "train_seconds": seconds,
        "tokens_seen": tokens,
        "tokens_per_second": tokens / seconds,
    }


@torch.no_grad()
def evaluate(model: torch.nn.Module, rows_NT: torch.Tensor, batch_size: int) -> float:
    """Mean next-token cross-entropy over `rows_NT` (every row has the same length)."""
    model.eval()
    total = 0.0
    for start in range(0, len(rows_NT), batch_size):
        input_ids_BT = rows_NT[start : start + batch_size]
        total += model(input_ids=input_ids_BT, labels=input_ids_BT).loss.item() * len(input_ids_BT)
    return total / len(rows_NT)


def _load(recipe: TeacherRecipe, split: str) -> dict[str, list[Document]]:
    return {name: load_corpus(name, split, recipe.corpus_max_bytes) for name in recipe.corpora}


def _pack(
    documents: dict[str, list[Document]], tokenizer: Any, window: int, progress: bool
) -> dict[str, torch.Tensor]:
    from longred_pl.data.prepare import tokenize_documents

    rows = {}
    for name, docs in documents.items():
        token_docs = [d.input_ids for d in tokenize_documents(docs, tokenizer, progress=progress)]
        rows[name] = pack_rows(token_docs, window)
        if len(rows[name]) == 0:
            raise UserError(
                f"corpus {name!r} holds fewer tokens than one window ({window}); "
                "raise recipe.corpus_max_bytes or lower recipe.window"
            )
    return rows


def _measure(model: Any, train_rows: dict, val_rows: dict, recipe: TeacherRecipe) -> dict:
    metrics: dict[str, Any] = {}
    for split, rows in (("train", train_rows), ("val", val_rows)):
        for name, rows_NT in rows.items():
            loss = evaluate(model, spread(rows_NT, recipe.eval_rows), recipe.batch_size)
            metrics[f"{split}/{name}/loss"] = round(loss, 4)
            metrics[f"{split}/{name}/ppl"] = round(math.exp(loss), 2)
    return metrics


def _complete(out_dir: Path, recipe: TeacherRecipe) -> bool:
    if not all((out_dir / name).is_file() for name in REQUIRED_FILES):
        return False
    saved = json.loads((out_dir / RECIPE_FILE).read_text())
    try:
        return TeacherRecipe.from_dict(saved) == recipe
    except (TypeError, ValueError):
        return False


def learning_curve(
    model: torch.nn.Module, val_rows: dict[str, torch.Tensor], recipe: TeacherRecipe, every: int
) -> tuple[list[dict[str, Any]], Callable[[int], None]]:
    """A list of held-out losses per corpus, and the `after_step` hook that fills it.

    Every `every` steps and at the last one, each corpus's `val` rows (`eval_rows`, evenly
    spaced) are measured; a point is `{"step", "tokens", "val/<corpus>/loss"}` and `tokens`
    counts every training token seen so far (all corpora).
    """
    curve: list[dict[str, Any]] = []
    rows = {name: spread(rows_NT, recipe.eval_rows) for name, rows_NT in val_rows.items()}

    def after_step(steps_done: int) -> None:
        if steps_done % every and steps_done != recipe.steps:
            return
        point: dict[str, Any] = {"step": steps_done}
        point["tokens"] = steps_done * recipe.batch_size * recipe.window
        for name, rows_NT in rows.items():
            point[f"val/{name}/loss"] = round(evaluate(model, rows_NT, recipe.batch_size), 4)
        model.train()
        curve.append(point)

    return curve, after_step


def _train_into(
    staging: Path, recipe: TeacherRecipe, progress: bool, curve_every: int = 0
) -> dict[str, Any]:
    from transformers import AutoModelForCausalLM

    from longred_pl.data.tokenizer import train_tokenizer

    start = time.perf_counter()
    train_docs, val_docs = _load(recipe, "train"), _load(recipe, "val")
    all_train = [d for docs in train_docs.values() for d in docs]
    tokenizer = train_tokenizer(all_train, recipe.vocab_size, staging)
    train_rows = _pack(train_docs, tokenizer, recipe.window, progress)
    val_rows = _pack(val_docs, tokenizer, recipe.window, progress)
    with torch.random.fork_rng(devices=[]):  # seeded init without touching global state
        torch.manual_seed(recipe.seed)
        model = AutoModelForCausalLM.from_config(
            teacher_config(recipe, tokenizer), attn_implementation="sdpa", dtype=torch.float32
        )
    curve, after_step = learning_curve(model, val_rows, recipe, curve_every)
    train_NT = torch.cat(list(train_rows.values()))
    stats = train(model, train_NT, recipe, progress, after_step if curve_every else None)
    losses = stats.pop("losses")
    metrics = {
        "num_parameters": sum(p.numel() for p in model.parameters()),
        **{k: round(v, 2) for k, v in stats.items()},
        "final_train_loss_last50": round(float(np.mean(losses[-50:])), 4),
        **_measure(model, train_rows, val_rows, recipe),
        "torch_threads": torch.get_num_threads(),
        "build_seconds": round(time.perf_counter() - start, 2),
        "train_tokens_per_corpus": {name: rows.numel() for name, rows in train_rows.items()},
    }
    if curve_every:
        metrics["curve"] = curve
    model.save_pretrained(staging)
    (staging / RECIPE_FILE).write_text(json.dumps(recipe.to_dict(), indent=2) + "\n")
    (staging / METRICS_FILE).write_text(json.dumps(metrics, indent=2) + "\n")
    return metrics


def build_teacher(
    out_dir: str | Path,
    recipe: TeacherRecipe = TeacherRecipe(),  # noqa: B008 (frozen, so a shared default is safe)
    progress: bool = True,
    force: bool = False,
    curve_every: int = 0,
) -> Path:
    """Train the teacher into `out_dir`, or reuse the complete one built from `recipe`.

    The build happens in `<out_dir>.partial` and is moved into place when complete, so an
    interrupted build never looks finished. `force=True` retrains even when cached.
    `curve_every > 0` records the held-out learning curve (`learning_curve`) in
    metrics.json; a cached teacher is reused as it is.
    """
    out_dir = Path(out_dir).resolve()
    if not force and _complete(out_dir, recipe):
        print(f"reusing teacher in {out_dir} (same recipe; pass force=True / --force to retrain)")
        return out_dir
    if out_dir.exists() and any(out_dir.iterdir()) and not (out_dir / RECIPE_FILE).is_file():
        raise UserError(f"--out: {out_dir} is not empty and holds no teacher; choose another --out")
    staging = out_dir.with_name(out_dir.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    metrics = _train_into(staging, recipe, progress, curve_every)
    shutil.rmtree(out_dir, ignore_errors=True)
    staging.rename(out_dir)
    print(f"teacher saved to {out_dir}: {json.dumps(metrics)}")
    return out_dir


def ensure_teacher(
    out_dir: str | Path,
    recipe: TeacherRecipe = TeacherRecipe(),  # noqa: B008
    progress: bool = False,
    curve_every: int = 0,
) -> Path:
    """The cached build: the teacher in `out_dir` for `recipe`, trained only if missing."""
    return build_teacher(out_dir, recipe, progress=progress, force=False, curve_every=curve_every)


def build_teacher_cli(
    out: str,
    recipe: str | None = None,
    corpora: list[str] | None = None,
    steps: int | None = None,
    seed: int | None = None,
    threads: int | None = None,
    force: bool = False,
    progress: bool = True,
) -> Path:
    """Train (or reuse) the demo teacher: a small Llama on embedded text, short window.

    Args:
        out: output directory (a complete teacher of the same recipe there is reused).
        recipe: recipe YAML/JSON (e.g. configs/teacher/tiny-llama.yaml); default the built-in one.
        corpora: override recipe.corpora (embedded corpus names).
        steps: override recipe.steps.
        seed: override recipe.seed.
        threads: torch intra-op threads (default: torch's); 1 degrades least when other
            jobs share the cores.
        force: retrain even if cached, replacing what ``out`` holds whole (a teacher of
            another recipe there is refused without it).
        progress: show progress bars (``--no-progress`` hides them).
    """
    chosen = TeacherRecipe.from_file(recipe) if recipe else TeacherRecipe()
    overrides = {"corpora": corpora, "steps": steps, "seed": seed}
    chosen = dataclasses.replace(chosen, **{k: v for k, v in overrides.items() if v is not None})
    if threads:
        torch.set_num_threads(threads)
    folder = Path(out)
    if not force and (folder / RECIPE_FILE).is_file() and not _complete(folder.resolve(), chosen):
        raise UserError(
            f"--out: {out} holds a teacher of another recipe (or an unfinished one); pass "
            f"--force to replace it whole, or another --out"
        )
    return build_teacher(out, chosen, progress=progress, force=force)
