"""LT-GenAug's class-adaptive synthetic sampler: batch composition, REINFORCE agents, the handler."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from busmonai.data.adaptive_sampler import ACTIONS, ClassAdaptiveBatchSampler, ReinforceClassAgents
from busmonai.engines.handlers import AdaptiveSamplerUpdate
from busmonai.errors import BusmonaiInputError

CLASSES = ("benign", "malignant")


def _items(real: dict[str, int], synthetic: dict[str, int]) -> list[dict[str, Any]]:
    items = []
    for flag, counts in ((False, real), (True, synthetic)):
        for cls, n in counts.items():
            items += [{"image": f"{cls}_{flag}_{k}.png", "class": cls, "synthetic": flag} for k in range(n)]
    return items


def test_batches_hold_all_real_items_once_plus_the_synthetic_counts() -> None:
    items = _items({"benign": 7, "malignant": 3}, {"benign": 5, "malignant": 4})
    sampler = ClassAdaptiveBatchSampler(items, batch_size=4, classes=CLASSES, initial=0, max_per_class=8, seed=1)
    sampler.set_count("benign", 1)
    sampler.set_count("malignant", 3)
    batches = list(sampler)
    assert len(batches) == len(sampler) == 3
    real = [i for b in batches for i in b if not items[i]["synthetic"]]
    assert sorted(real) == list(range(10))
    for batch in batches:
        synthetic = Counter(items[i]["class"] for i in batch if items[i]["synthetic"])
        assert synthetic == {"benign": 1, "malignant": 3}
    # cycling through a pool: 9 malignant draws from a pool of 4 use every item at least twice
    drawn = Counter(i for b in batches for i in b if items[i]["synthetic"] and items[i]["class"] == "malignant")
    assert set(drawn) == {i for i, it in enumerate(items) if it["synthetic"] and it["class"] == "malignant"}
    assert min(drawn.values()) >= 2
    again = ClassAdaptiveBatchSampler(items, batch_size=4, classes=CLASSES, max_per_class=8, seed=1)
    again.set_count("benign", 1)
    again.set_count("malignant", 3)
    assert list(again) == batches  # seeded


def test_counts_are_clipped_and_classes_without_pool_stay_at_zero() -> None:
    items = _items({"benign": 4, "malignant": 4}, {"benign": 3})
    sampler = ClassAdaptiveBatchSampler(items, batch_size=4, classes=CLASSES, initial=2, max_per_class=4)
    assert sampler.counts == {"benign": 2, "malignant": 0}
    assert sampler.set_count("benign", 9) == 4 and sampler.set_count("benign", -3) == 0
    assert sampler.set_count("malignant", 2) == 0
    state = {"counts": {"benign": 3, "malignant": 5}}
    sampler.load_state_dict(state)
    assert sampler.state_dict() == {"counts": {"benign": 3, "malignant": 0}}


def test_sampler_rejects_bad_input() -> None:
    with pytest.raises(BusmonaiInputError, match="no synthetic benign/malignant items"):
        ClassAdaptiveBatchSampler(_items({"benign": 2}, {}), 2, CLASSES)
    with pytest.raises(BusmonaiInputError, match="no real items"):
        ClassAdaptiveBatchSampler(_items({}, {"benign": 2}), 2, CLASSES)
    with pytest.raises(BusmonaiInputError, match="initial count 5"):
        ClassAdaptiveBatchSampler(_items({"benign": 2}, {"benign": 2}), 2, CLASSES, initial=5, max_per_class=4)
    with pytest.raises(BusmonaiInputError, match="lr"):
        ReinforceClassAgents(CLASSES, lr=0)


def test_reinforce_learns_the_rewarded_action() -> None:
    """Reward +2 for malignant and -2 for benign: the policies move there and the counts follow."""
    items = _items({"benign": 8, "malignant": 8}, {"benign": 8, "malignant": 8})
    sampler = ClassAdaptiveBatchSampler(items, 4, CLASSES, initial=4, max_per_class=8, seed=0)
    agents = ReinforceClassAgents(CLASSES, lr=2.0, baseline_momentum=0.5, seed=0)
    assert np.allclose(agents.probabilities("benign"), 1 / 3)
    assert agents.update(0.7) == 0.0 and agents.baseline == 0.7  # first reward: baseline only
    for _ in range(200):
        agents.act(sampler)
        good = (ACTIONS[agents.last_actions["malignant"]] == 2) + (ACTIONS[agents.last_actions["benign"]] == -2)
        agents.update(float(good))
    assert agents.probabilities("malignant")[ACTIONS.index(2)] > 0.8
    assert agents.probabilities("benign")[ACTIONS.index(-2)] > 0.8
    assert sampler.counts["malignant"] >= 6 and sampler.counts["benign"] <= 2
    restored = ReinforceClassAgents(CLASSES)
    restored.load_state_dict(agents.state_dict())
    assert np.allclose(restored.probabilities("malignant"), agents.probabilities("malignant"))
    assert restored.baseline == agents.baseline


def test_handler_rewards_the_cubed_metric_and_records_history(tmp_path: Path) -> None:
    items = _items({"benign": 4, "malignant": 4}, {"benign": 4, "malignant": 4})
    sampler = ClassAdaptiveBatchSampler(items, 4, CLASSES, initial=2, max_per_class=8)
    agents = ReinforceClassAgents(CLASSES, seed=3)
    handler = AdaptiveSamplerUpdate(sampler, agents, "val_auc", power=3, path=tmp_path / "adaptive.json")
    for auc in (0.5, 0.8):
        handler(SimpleNamespace(state=SimpleNamespace(metrics={"val_auc": auc})))
    assert agents.baseline == pytest.approx(0.9 * 0.5 ** 3 + 0.1 * 0.8 ** 3)
    assert handler.history[1]["advantage"] == pytest.approx(0.8 ** 3 - 0.5 ** 3)
    assert handler.history[-1]["counts"] == sampler.counts
    record = json.loads((tmp_path / "adaptive.json").read_text())
    assert [h["metric"] for h in record["history"]] == [0.5, 0.8]
    with pytest.raises(BusmonaiInputError, match="no metric 'val_auc'"):
        handler(SimpleNamespace(state=SimpleNamespace(metrics={"val_f1": 0.3})))


def test_a_smoothed_reward_and_the_plot_of_the_agents_choices(tmp_path: Path) -> None:
    items = _items({"benign": 4, "malignant": 4}, {"benign": 4, "malignant": 4})
    sampler = ClassAdaptiveBatchSampler(items, 4, CLASSES, initial=2, max_per_class=8)
    agents = ReinforceClassAgents(CLASSES, seed=3)
    handler = AdaptiveSamplerUpdate(sampler, agents, "val_auc", power=3, path=tmp_path / "adaptive.json",
                                    smoothing=0.75)
    for auc in (0.5, 0.9):
        handler(SimpleNamespace(state=SimpleNamespace(metrics={"val_auc": auc})))
    smoothed = 0.75 * 0.5 + 0.25 * 0.9  # one noisy validation moves the reward a quarter of the way
    assert handler.history[1]["smoothed"] == pytest.approx(smoothed)
    assert handler.history[1]["advantage"] == pytest.approx(smoothed ** 3 - 0.5 ** 3)
    assert (tmp_path / "adaptive.png").is_file()
    restored = AdaptiveSamplerUpdate(sampler, agents, "val_auc", smoothing=0.75)
    restored.load_state_dict(handler.state_dict())
    assert restored.smoothed == pytest.approx(smoothed)
    with pytest.raises(BusmonaiInputError, match="adaptive_reward_smoothing 1.0"):
        AdaptiveSamplerUpdate(sampler, agents, smoothing=1.0)
