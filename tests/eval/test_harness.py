"""The lm-evaluation-harness bridge on a tiny local multiple-choice task (offline)."""

from __future__ import annotations

from pathlib import Path

import pytest

from ropelab.config import ModelConfig
from ropelab.data.tokenizer import ByteTokenizer
from ropelab.errors import RopelabError
from ropelab.models import build_tiny_llama

pytest.importorskip("lm_eval", reason="lm-evaluation-harness not installed: pip install -e '.[eval]'")

from ropelab.eval.harness import continuation_logprob, short_context_quality  # noqa: E402

TASK_DATA = Path(__file__).resolve().parents[1] / "data" / "lm_eval_task" / "tiny_mc.jsonl"


@pytest.fixture
def task_dir(tmp_path):
    (tmp_path / "tiny_mc.yaml").write_text(f"""task: ropelab_tiny_mc
dataset_path: json
dataset_kwargs:
  data_files:
    test: {TASK_DATA}
test_split: test
output_type: multiple_choice
doc_to_text: "{{{{question}}}}"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: answer
metric_list:
  - metric: acc
""")
    return tmp_path


def expected_accuracy(model, tokenizer) -> float:
    """The same decision computed directly: the choice with the highest log-likelihood."""
    import json

    rows = [json.loads(line) for line in TASK_DATA.read_text().splitlines()]
    correct = 0
    for row in rows:
        context = [tokenizer.bos_token_id, *tokenizer.encode(row["question"])]
        scores = [continuation_logprob(model, context, tokenizer.encode(c))[0] for c in row["choices"]]
        correct += int(max(range(len(scores)), key=scores.__getitem__) == row["answer"])
    return correct / len(rows)


@pytest.mark.parametrize("seed", [0, 1])
def test_bridge_scores_a_local_task_like_a_direct_computation(task_dir, seed):
    model = build_tiny_llama(ModelConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                         intermediate_size=64), seed).eval()
    tokenizer = ByteTokenizer()
    results = short_context_quality(model, tokenizer, ["ropelab_tiny_mc"], include_path=task_dir)
    assert results["ropelab_tiny_mc"]["acc,none"] == pytest.approx(expected_accuracy(model, tokenizer))


def test_unknown_task_offline_is_a_clear_error(task_dir):
    model = build_tiny_llama(ModelConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                         intermediate_size=64), 0).eval()
    with pytest.raises(RopelabError, match="unknown lm-eval task"):
        short_context_quality(model, ByteTokenizer(), ["not_a_task_anywhere"], include_path=task_dir)
