"""RULER offline: the synthetic tasks through the harness bridge, with nothing downloaded (the network guard in
conftest records every outside connection), scored by lm-eval's own pipeline."""

from __future__ import annotations

import pytest

from ropelab.data.tokenizer import ByteTokenizer
from ropelab.errors import RopelabError
from tests import conftest

pytest.importorskip("lm_eval", reason="lm-evaluation-harness not installed: pip install -e '.[eval]'")

from ropelab.eval import ruler  # noqa: E402


def fake_lm(answer):
    """An lm_eval LM that answers every RULER prompt with ``answer(doc)`` (the task's own doc)."""
    from lm_eval.api.model import LM

    class Fake(LM):
        def loglikelihood(self, requests):
            raise NotImplementedError

        def loglikelihood_rolling(self, requests):
            raise NotImplementedError

        def generate_until(self, requests):
            return [answer(r.doc) for r in requests]

    return Fake()


@pytest.fixture(scope="module")
def byte_dir(tmp_path_factory):
    return ruler.write_hf_tokenizer(ByteTokenizer(), tmp_path_factory.mktemp("ruler") / "tokenizer")


@pytest.mark.parametrize("task", ["niah_single_2", "ruler_qa_squad"])
def test_a_task_that_needs_hub_data_is_refused_with_one_line(task):
    with pytest.raises(RopelabError) as error:
        ruler.check_tasks(["niah_single_1", task])
    message = str(error.value)
    assert "\n" not in message and task in message and "hub" in message and "ruler_fwe" in message


def test_config_accepts_only_the_offline_tasks():
    from ropelab.config import load_config

    assert load_config(None, ["ruler.tasks=[ruler_fwe]", "ruler.limit=3"]).ruler.limit == 3
    with pytest.raises(RopelabError, match="ruler.tasks"):
        load_config(None, ["ruler.tasks=[niah_single_2]"])
    with pytest.raises(RopelabError, match="ruler.limit"):
        load_config(None, ["ruler.limit=0"])


def test_config_choices_are_the_library_tasks():
    import typing

    from ropelab.config import RulerTask

    assert set(typing.get_args(RulerTask)) == set(ruler.SYNTHETIC_TASKS)


def test_byte_tokenizer_directory_counts_tokens_as_the_model_sees_them(byte_dir):
    from transformers import AutoTokenizer

    hf = AutoTokenizer.from_pretrained(str(byte_dir))
    text = "One of the special magic numbers for héllo-wörld is: 1234567.\n\tThe grass is green."
    tokenizer = ByteTokenizer()
    assert hf(text).input_ids == [tokenizer.bos_token_id, *tokenizer.encode(text)]  # harness.context_ids
    assert hf.decode(hf(text).input_ids, skip_special_tokens=True) == text


def test_punkt_tab_comes_from_the_installed_package(tmp_path):
    import nltk

    ruler.use_nltk_data(ruler.write_punkt_tab(tmp_path / "nltk_data"))
    assert str(nltk.data.find("tokenizers/punkt_tab/english/")).startswith(str(tmp_path))
    # the English model itself: "Mr." and "p.m." are abbreviations, not sentence ends
    assert nltk.sent_tokenize("Mr. Smith left at 5 p.m. on Friday. He came back.") == [
        "Mr. Smith left at 5 p.m. on Friday.", "He came back."]


def test_lengths_a_task_cannot_fit_are_skipped_with_the_reason_instead_of_hanging(tmp_path, byte_dir):
    # on bytes, vt's in-context example never fits its fixed 500 tokens and cwe needs > 2048: lm-eval's
    # generators would loop forever there
    result = ruler.ruler_scores(fake_lm(lambda doc: ""), ["ruler_vt", "ruler_cwe"], [1024], 2, 0, tmp_path,
                                byte_dir)
    assert [(c.task, c.score, c.samples) for c in result.cells] == [("ruler_vt", None, 0), ("ruler_cwe", None, 0)]
    assert "500 tokens" in result.cells[0].skipped and "needs ≥" in result.cells[1].skipped
    assert "skipped ruler_vt @ 1024" in ruler.markdown_table(result, "RULER")


def test_the_scorer_can_fail_right_answers_score_one_and_wrong_ones_zero(tmp_path, byte_dir):
    before = len(conftest.NETWORK_ATTEMPTS)
    right = ruler.ruler_scores(fake_lm(lambda doc: " ".join(doc["outputs"])), ["ruler_fwe"], [1024], 2, 0,
                               tmp_path, byte_dir)
    wrong = ruler.ruler_scores(fake_lm(lambda doc: "qwerty uiopas dfghjk"), ["ruler_fwe"], [1024], 2, 0,
                               tmp_path, byte_dir)
    assert right.table() == {"ruler_fwe": {1024: 1.0}} and right.cells[0].samples == 2
    assert wrong.table() == {"ruler_fwe": {1024: 0.0}}
    assert len(conftest.NETWORK_ATTEMPTS) == before  # nothing reached for, not even blocked


def test_the_same_seed_makes_the_same_prompts(tmp_path, byte_dir):
    prompts = {}

    def record(seed):
        def answer(doc):
            prompts.setdefault(seed, []).append(doc["input"])
            return ""
        return answer

    for seed in (0, 0, 1):
        ruler.ruler_scores(fake_lm(record(seed)), ["ruler_fwe"], [512], 1, seed, tmp_path, byte_dir)
    assert prompts[0][0] == prompts[0][1] and prompts[0][0] != prompts[1][0]


@pytest.mark.slow
def test_ruler_on_the_smoke_model_offline_through_the_cli_lands_in_mlflow(capsys):
    from ropelab.flows import cli
    from ropelab.tasks import tracking

    before = len(conftest.NETWORK_ATTEMPTS)
    assert cli.main(["evaluate", "--suite", "ruler", "--config", "smoke", "--limit", "2"]) == 0
    assert len(conftest.NETWORK_ATTEMPTS) == before
    client = tracking.client()
    experiment = client.get_experiment_by_name("ropelab-smoke")
    runs = client.search_runs([experiment.experiment_id], "attributes.run_name = 'ruler'",
                              order_by=["attributes.start_time DESC"], max_results=1)
    assert runs and runs[0].info.status == "FINISHED"
    metrics = runs[0].data.metrics
    scored = [(t, n) for t in ("niah_single_1", "niah_multikey_2", "niah_multikey_3", "ruler_fwe")
              for n in (1024, 2560)] + [("ruler_cwe", 2560)]  # 16 L and 40 L
    for task, n in scored:
        assert 0.0 <= metrics[f"ruler/{task}/{n}"] <= 1.0 and metrics[f"ruler_samples/{task}/{n}"] == 2
    tags = runs[0].data.tags
    assert "500 tokens" in tags["ruler.skipped.ruler_vt/1024"] and "500 tokens" in tags["ruler.skipped.ruler_vt/2560"]
    assert "needs ≥" in tags["ruler.skipped.ruler_cwe/1024"] and "ruler/ruler_cwe/1024" not in metrics
    files = {f.path for f in client.list_artifacts(runs[0].info.run_id, "ruler")}
    assert {"ruler/ruler.md", "ruler/ruler.json", "ruler/ruler_vs_length.png"} <= files
    assert "| niah_single_1 |" in capsys.readouterr().out


def test_plot_draws_the_scored_tasks_and_leaves_out_the_all_skipped_ones(tmp_path):
    from ropelab.eval.plots import plot_ruler

    path = plot_ruler({"niah_single_1": {1024: 1.0, 2048: 0.5}, "ruler_vt": {}}, tmp_path / "r.png", "RULER", 64)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 5000


def test_cli_suite_and_limit_reach_the_config_and_a_bad_limit_is_one_line(capsys):
    from ropelab.flows import cli

    args = cli.build_parser().parse_args(["evaluate", "--suite", "ruler", "--limit", "3"])
    assert (args.suite, args.limit) == ("ruler", 3)
    assert cli.main(["evaluate", "--suite", "ruler", "--config", "smoke", "--limit", "0"]) == 2
    error = capsys.readouterr().err.strip()
    assert "\n" not in error and "ruler.limit" in error


def test_an_hf_tokenizer_is_saved_as_is(tmp_path):
    from transformers import AutoTokenizer

    from tests.eval.local_tokenizers import qwen2_style_tokenizer

    tokenizer = qwen2_style_tokenizer()
    saved = AutoTokenizer.from_pretrained(str(ruler.write_hf_tokenizer(tokenizer, tmp_path / "tok")))
    text = "The grass is green. The sky is blue. 48213"
    assert saved(text, add_special_tokens=False).input_ids == tokenizer.encode(text)
