"""`plan_lanes`: an experiment's cells split for several workers, each lane one model's cells in order."""
from __future__ import annotations

from types import SimpleNamespace

from pipelines.experiments.runner import plan_lanes


def plan_of(models: list[str]):
    """A plan whose cell i uses models[i], run in grid order (only what plan_lanes reads)."""
    cells = tuple(SimpleNamespace(request=SimpleNamespace(model=model)) for model in models)
    return SimpleNamespace(cells=cells, run_order=tuple(range(len(cells))))


def models_in(plan, lane):
    return {plan.cells[index].request.model for index in lane}


def test_one_lane_is_the_plan_order():
    plan = plan_of(["a", "b", "a"])
    assert plan_lanes(plan, 1) == [[0, 1, 2]]


def test_one_model_is_cut_into_consecutive_runs_one_per_lane():
    plan = plan_of(["a"] * 5)
    assert plan_lanes(plan, 2) == [[0, 1, 2], [3, 4]]


def test_whole_models_go_to_the_emptiest_lane_and_no_lane_mixes_models_it_need_not():
    plan = plan_of(["a"] * 4 + ["b"] * 2 + ["c"] * 2)
    lanes = plan_lanes(plan, 2)
    assert sorted(sorted(lane) for lane in lanes) == [[0, 1, 2, 3], [4, 5, 6, 7]]
    assert sorted(index for lane in lanes for index in lane) == list(range(8))


def test_spare_lanes_go_to_the_model_with_the_most_cells():
    plan = plan_of(["a"] * 6 + ["b"] * 2)
    lanes = plan_lanes(plan, 3)
    assert [models_in(plan, lane) for lane in lanes] == [{"a"}, {"a"}, {"b"}]
    assert [len(lane) for lane in lanes] == [3, 3, 2]


def test_more_lanes_than_cells_leaves_no_empty_lane():
    plan = plan_of(["a", "a"])
    assert plan_lanes(plan, 4) == [[0], [1]]
