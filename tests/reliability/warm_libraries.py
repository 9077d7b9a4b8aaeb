"""Imported by the crash tests' forkserver only: compiles ranx's numba metrics once (about 18 s under
load), so that every forked `train-ranker` child starts with them compiled, as `train-ranker` would in a
second run on a machine with a warm numba cache."""

from ranx import Qrels, Run, evaluate

from evaluation.train import GATE_METRIC

evaluate(Qrels.from_dict({"q": {"a": 2, "b": 1}}), Run.from_dict({"q": {"a": 0.5, "b": 0.9, "c": 0.1}}), GATE_METRIC)
