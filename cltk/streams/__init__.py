"""Task streams: the shared data model (:mod:`cltk.streams.base`) and the benchmark builders."""
from cltk.streams.base import SCENARIOS, Split, Stream, Task
from cltk.streams.builders import BENCHMARKS, describe_benchmarks, make_stream

__all__ = ["Stream", "Task", "Split", "SCENARIOS", "make_stream", "BENCHMARKS", "describe_benchmarks"]
