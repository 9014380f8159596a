"""The text-3tasks stream: real corpora, token ids, output units, caps, determinism and argument checks."""
import pytest
import torch

from cltk.streams import make_stream
from cltk.streams.text_tasks import make_text_stream
from cltk.text.corpora import bbc_news


@pytest.fixture(scope="module")
def stream():
    return make_stream("text-3tasks", "task", 0, train_per_task=40, test_per_task=30)


def test_tasks_units_and_shapes(stream):
    assert [t.name for t in stream.tasks] == ["bbc-topic", "drug-sentiment", "drug-condition"]
    assert stream.meta["class_names"] == [["business", "entertainment", "politics", "sports", "tech"],
                                          ["negative", "positive"], ["Birth Control", "Depression", "Pain", "Acne"]]
    assert stream.n_outputs == 11 and stream.input_shape == (64,)
    assert [t.output_units for t in stream.tasks] == [(0, 1, 2, 3, 4), (5, 6), (7, 8, 9, 10)]
    for task in stream.tasks:
        for split, n in ((task.train, 36), (task.val, 4), (task.test, 30)):
            assert split.x.dtype == torch.int64 and split.x.shape == (n, 64)
            assert (split.x[:, 0] == 101).all() and ((split.x == 102).sum(1) == 1).all()
            assert set(split.y.tolist()) <= set(task.output_units)
        assert set(task.test.y.tolist()) == set(task.output_units)


def test_caps_are_class_stratified(stream):
    assert stream.tasks[0].train.y.bincount(minlength=5).tolist() == [8, 7, 7, 7, 7] or \
        sorted(stream.tasks[0].train.y.bincount(minlength=5).tolist()) == [7, 7, 7, 7, 8]
    assert stream.tasks[1].test.y.bincount(minlength=7)[5:].tolist() == [15, 15]


def test_deterministic_per_seed_and_seed_changes_subsets(stream):
    again = make_stream("text-3tasks", "task", 0, train_per_task=40, test_per_task=30)
    other = make_stream("text-3tasks", "task", 1, train_per_task=40, test_per_task=30)
    for a, b, c in zip(stream.tasks, again.tasks, other.tasks):
        assert torch.equal(a.train.x, b.train.x) and torch.equal(a.test.y, b.test.y)
        assert not torch.equal(a.train.x, c.train.x)


def test_bbc_test_pool_is_fixed_and_disjoint_from_training():
    s0 = make_text_stream(seed=0, train_per_task=2000, test_per_task=1000, val_fraction=0.0)
    s1 = make_text_stream(seed=1, train_per_task=2000, test_per_task=1000, val_fraction=0.0)
    bbc0, bbc1 = s0.tasks[0], s1.tasks[0]
    assert len(bbc0.test) == 421 and len(bbc0.train) == 1682   # 20% / 80% of the 2,103 distinct articles
    assert torch.equal(bbc0.test.x, bbc1.test.x)
    test_rows = {tuple(r) for r in bbc0.test.x.tolist()}
    assert not test_rows & {tuple(r) for r in bbc0.train.x.tolist()}
    # the drug tasks: 546 positive/negative and 196 top-4-condition reviews in drugsComTrain
    assert len(s0.tasks[1].train) == 546 and len(s0.tasks[2].train) == 196
    for task in s0.tasks[1:]:
        assert not {tuple(r) for r in task.test.x.tolist()} & {tuple(r) for r in task.train.x.tolist()}


def test_corpora_have_no_duplicate_texts():
    texts, labels = bbc_news()
    assert len(texts) == 2103
    assert len({" ".join(t.lower().split())[:200] for t in texts}) == 2103
    assert [labels.count(k) for k in range(5)] == [502, 365, 399, 502, 335]


def test_domain_scenario_shares_units():
    s = make_text_stream(scenario="domain", train_per_task=10, test_per_task=10)
    assert s.n_outputs == 5 and [t.output_units for t in s.tasks] == [(0, 1, 2, 3, 4), (0, 1), (0, 1, 2, 3)]


@pytest.mark.parametrize("kwargs,match", [
    (dict(angles=[0.0]), "angles"), (dict(image_size=14), "image_size"), (dict(train_per_task=0), "train_per_task"),
    (dict(val_fraction=1.0), "val_fraction"), (dict(scenario="joint"), "scenario"),
])
def test_bad_arguments_name_the_field(kwargs, match):
    scenario = kwargs.pop("scenario", "task")
    with pytest.raises(ValueError, match=match):
        make_stream("text-3tasks", scenario, 0, **kwargs)


def test_unknown_text_benchmark():
    with pytest.raises(ValueError, match="text-3tasks"):
        make_stream("text-9tasks", "task", 0)
