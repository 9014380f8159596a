"""Named task sequences reachable through make_stream (and so through the CLI), and the backbone models."""
import pytest

from cltk.models import build_model
from cltk.streams.builders import NAMED_STREAMS, describe_benchmarks, make_stream


def test_awm_sequence_by_name_with_stream_kwargs():
    s = make_stream("mnist5k-fmnist-halves", "task", 0, train_per_task=20, test_per_task=10)
    assert [t.name for t in s.tasks] and len(s.tasks) == 4 and s.input_shape == (3, 32, 32)
    assert all(len(t.test) == 10 for t in s.tasks)
    assert "mnist5k-fmnist-halves" in dict(describe_benchmarks())


def test_unknown_benchmark_lists_the_named_streams():
    with pytest.raises(ValueError, match="mnist5k-fmnist-halves"):
        make_stream("nope", "task", 0)


def test_backbone_model_by_name_has_one_head_per_task():
    s = make_stream("mnist5k-fmnist-halves", "task", 0, train_per_task=20, test_per_task=10)
    net = build_model("efficientnet-lite0", s, seed=0)
    out = net(s.tasks[0].test.x[:2])
    assert out.shape == (2, s.n_outputs)
    assert set(NAMED_STREAMS) <= set(dict(describe_benchmarks()))
