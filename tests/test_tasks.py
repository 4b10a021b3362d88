"""The verifiable tasks (refimpl.tasks): deterministic prompts, targets checked against rules
written here independently, rewards against hand-computed values, preference pairs (plain and
length-biased), and the tokenizer's coverage of every prompt and target."""

import dataclasses
import itertools
import random

import pytest

from refimpl.models import build_tokenizer
from refimpl.tasks import TASKS, make_task

STEPS = {"reverse": 150, "addition": 300, "sort": 200, "decisive": 100}


def _rule(name, prompt):
    """The targets, written independently of the module."""
    if name in ("reverse", "decisive"):
        return prompt[:-1][::-1]
    if name == "addition":
        a, b = prompt[:-1].split("+")
        return str(int(a) + int(b))
    return "".join(sorted(prompt[:-1]))


@pytest.fixture(scope="module")
def tasks():
    return {name: make_task(name) for name in TASKS}


def test_the_four_tasks_and_their_defaults(tasks):
    assert set(TASKS) == set(STEPS)
    for name, task in tasks.items():
        assert task.name == name
        assert task.steps == STEPS[name]
        assert task.margin == 0.1 and task.tokenizer_path is None
        assert len(task.train_prompts) == 2000 and len(task.eval_prompts) == 200


def test_same_seed_same_prompts_other_seed_other_prompts_and_splits_disjoint(tasks):
    for name, task in tasks.items():
        again = make_task(name, seed=0)
        assert again.train_prompts == task.train_prompts
        assert again.eval_prompts == task.eval_prompts
        other = make_task(name, seed=1)
        assert other.train_prompts != task.train_prompts
        assert other.eval_prompts != task.eval_prompts
        assert len(set(task.train_prompts)) == len(task.train_prompts)
        assert len(set(task.eval_prompts)) == len(task.eval_prompts)
        assert not set(task.train_prompts) & set(task.eval_prompts)
        # the held-out set does not move when the train set grows
        assert make_task(name, n_train=50).eval_prompts == task.eval_prompts


def test_seeding_leaves_global_random_state_alone():
    random.seed(123)
    expected = random.random()
    random.seed(123)
    make_task("sort", seed=5, n_train=10, n_eval=10)
    assert random.random() == expected


def test_prompt_grammar_and_targets_follow_the_rules(tasks):
    grammar = {"reverse": (">", range(3, 6)), "sort": (":", range(4, 7)),
               "decisive": ("|", range(4, 5))}
    for name, task in tasks.items():
        prompts = task.train_prompts + task.eval_prompts
        assert set(task.targets) == set(prompts)
        for p in prompts:
            assert task.targets[p] == _rule(name, p) == task.target(p)
            if name == "addition":
                a, b = p[:-1].split("+")
                assert p[-1] == "=" and 10 <= int(a) <= 99 and 10 <= int(b) <= 99
            else:
                end, lengths = grammar[name]
                assert p[-1] == end and p[:-1].isdigit() and len(p) - 1 in lengths
    examples = {"reverse": ("4821>", "1284"), "addition": ("12+34=", "46"),
                "sort": ("5132:", "1235"), "decisive": ("1234|", "4321")}
    for name, (prompt, target) in examples.items():
        assert tasks[name].target(prompt) == target
    assert tasks["addition"].target("99+99=") == "198"


def test_rewards_work_on_any_well_formed_prompt_not_only_generated_ones(tasks):
    task = tasks["reverse"]
    fresh = next(p for p in ("99999>", "00000>", "12345>") if p not in task.targets)
    assert task.reward(fresh, fresh[:-1][::-1]) == 1.0


def test_strict_reward_is_one_on_the_target_and_zero_on_corruptions(tasks):
    task = tasks["reverse"]
    assert task.reward("4821>", "1284") == task.strict_reward("4821>", "1284") == 1.0
    for wrong in ("1204", "128", "12845", "", "4821", "1284>", " 1284"):
        assert task.strict_reward("4821>", wrong) == 0.0, wrong
    assert tasks["addition"].strict_reward("12+34=", "46") == 1.0
    assert tasks["addition"].strict_reward("12+34=", "046") == 0.0
    assert tasks["sort"].strict_reward("5132:", "1235") == 1.0
    assert tasks["sort"].strict_reward("5132:", "1325") == 0.0


def test_partial_reward_hand_computed_values(tasks):
    reverse, addition = tasks["reverse"], tasks["addition"]
    # target "1284": (positions right / 4) * min(m, 4) / max(m, 4)
    hand = {"1284": 1.0, "1204": 3 / 4, "128": (3 / 4) * (3 / 4), "12845": 1.0 * (4 / 5),
            "": 0.0, "9999": 0.0, "4821": 0.0, "1999": 1 / 4, "1299": 2 / 4, "1289": 3 / 4,
            "12": (2 / 4) * (2 / 4), "99849999": (2 / 4) * (4 / 8)}
    for completion, value in hand.items():
        assert reverse.partial_reward("4821>", completion) == pytest.approx(value, abs=1e-12), \
            completion
    # monotone: one more right position, more reward
    ladder = ["9999", "1999", "1299", "1289", "1284"]
    rewards = [reverse.partial_reward("4821>", c) for c in ladder]
    assert rewards == sorted(rewards) and len(set(rewards)) == len(rewards)
    # target "46"
    assert addition.partial_reward("12+34=", "47") == pytest.approx(0.5)
    assert addition.partial_reward("12+34=", "460") == pytest.approx(2 / 3)
    assert addition.partial_reward("12+34=", "4") == pytest.approx(0.25)


def test_partial_reward_is_in_unit_interval_and_one_only_when_exact(tasks):
    rng = random.Random(0)
    for name in ("reverse", "addition", "sort"):
        task = tasks[name]
        for prompt in task.eval_prompts[:40]:
            target = task.targets[prompt]
            completions = [target] + ["".join(rng.choice("0123456789+")
                                              for _ in range(rng.randint(0, 8)))
                                      for _ in range(20)]
            completions += [target[:-1], target + "0", target[1:] + target[0]]
            for c in completions:
                value = task.partial_reward(prompt, c)
                assert 0.0 <= value <= 1.0
                assert (value == 1.0) == (c == target), (prompt, c, value)


def test_process_reward_one_value_per_character(tasks):
    reverse, decisive = tasks["reverse"], tasks["decisive"]
    hand = {"1204": [1, 1, 0, 1], "12845": [1, 1, 1, 1, 0], "": [], "4821": [0, 0, 0, 0],
            "1": [1], "21": [0, 0]}
    for completion, values in hand.items():
        got = reverse.process_reward("4821>", completion)
        assert got == [float(v) for v in values], completion
        assert len(got) == len(completion)
    # decisive: target "4321", decisive index 2 ('2'); only that position, and only at length 4
    hand = {"4321": [0, 0, 1, 0], "9929": [0, 0, 1, 0], "4301": [0, 0, 0, 0],
            "43210": [0, 0, 0, 0, 0], "432": [0, 0, 0], "": []}
    for completion, values in hand.items():
        got = decisive.process_reward("1234|", completion)
        assert got == [float(v) for v in values], completion
        assert sum(got) == decisive.reward("1234|", completion)


def test_decisive_reward_depends_only_on_the_decisive_position(tasks):
    task = tasks["decisive"]
    assert task.decisive_index == 2
    for prompt in ("1234|", "9070|"):
        target = prompt[:-1][::-1]
        for digits in itertools.product("0123456789", repeat=4):
            c = "".join(digits)
            expected = 1.0 if c[2] == target[2] else 0.0
            assert task.strict_reward(prompt, c) == expected, (prompt, c)
            assert task.partial_reward(prompt, c) == expected
        # a right decisive token does not score at the wrong length
        assert task.reward(prompt, target[:3]) == 0.0
        assert task.reward(prompt, target + "1") == 0.0
    moved = make_task("decisive", decisive_index=0, n_train=10, n_eval=10)
    assert moved.reward("1234|", "4999") == 1.0 and moved.reward("1234|", "9321") == 0.0
    assert moved.process_reward("1234|", "4999") == [1.0, 0.0, 0.0, 0.0]


def test_preference_pairs_prefer_the_correct_completion(tasks):
    for name, task in tasks.items():
        pairs = task.preference_pairs(300, seed=3)
        assert len(pairs) == 300
        assert pairs == task.preference_pairs(300, seed=3)
        assert pairs != task.preference_pairs(300, seed=4)
        train = set(task.train_prompts)
        shapes = set()
        for prompt, chosen, rejected in pairs:
            assert prompt in train
            assert chosen == _rule(name, prompt)
            assert task.strict_reward(prompt, chosen) > task.strict_reward(prompt, rejected)
            assert task.partial_reward(prompt, chosen) > task.partial_reward(prompt, rejected)
            shapes.add((len(rejected) > len(chosen)) - (len(rejected) < len(chosen)))
        assert shapes == {-1, 0, 1}, f"{name}: corruptions should change, drop and duplicate"


def test_length_biased_pairs_prefer_the_longer_completion_whatever_its_correctness(tasks):
    for name, task in tasks.items():
        pairs = task.preference_pairs(300, seed=3, bias="longer")
        assert pairs == task.preference_pairs(300, seed=3, bias="longer")
        outcomes = {"chosen wrong": 0, "right beats wrong": 0, "wrong beats right": 0}
        for prompt, chosen, rejected in pairs:
            assert prompt in task.targets
            assert len(chosen) > len(rejected), (prompt, chosen, rejected)
            right_c = task.strict_reward(prompt, chosen) == 1.0
            right_r = task.strict_reward(prompt, rejected) == 1.0
            outcomes["chosen wrong"] += not right_c
            outcomes["right beats wrong"] += right_c and not right_r
            outcomes["wrong beats right"] += right_r and not right_c
        assert outcomes["chosen wrong"] >= 0.4 * len(pairs), (name, outcomes)
        # correctness does not predict the preference: both directions are common
        assert outcomes["right beats wrong"] >= 0.2 * len(pairs), (name, outcomes)
        assert outcomes["wrong beats right"] >= 0.2 * len(pairs), (name, outcomes)


def test_every_prompt_and_target_encodes_without_unknowns_and_fits_max_new_tokens(tasks):
    tok = build_tokenizer()
    for task in tasks.values():
        prompts = task.train_prompts + task.eval_prompts
        texts = prompts + [task.targets[p] for p in prompts]
        for text, ids in zip(texts, tok(texts)["input_ids"]):
            assert ids[0] == tok.bos_token_id and len(ids) == len(text) + 1, text
            assert min(ids[1:]) > tok.eos_token_id, f"{text!r} has an unknown character: {ids}"
            assert tok.decode(ids[1:]) == text
        longest = max(len(t) for t in task.targets.values())
        assert task.max_new_tokens >= longest + 1
        pairs = task.preference_pairs(50, 0) + task.preference_pairs(50, 0, bias="longer")
        for completion in {c for pair in pairs for c in pair[1:]}:
            assert 0 not in tok(completion)["input_ids"]


def test_the_tokenizer_path_is_set_by_replace(tasks):
    task = dataclasses.replace(tasks["sort"], tokenizer_path="/tmp/tok")
    assert task.tokenizer_path == "/tmp/tok" and task.train_prompts == tasks["sort"].train_prompts
    with pytest.raises(dataclasses.FrozenInstanceError):
        tasks["sort"].tokenizer_path = "/tmp/tok"


@pytest.mark.parametrize("name, prompt", [
    ("reverse", "12>"), ("reverse", "123456>"), ("reverse", "4821"), ("reverse", "48a1>"),
    ("reverse", "4821:"), ("addition", "1+2="), ("addition", "05+12="), ("addition", "12+34"),
    ("addition", "100+1="), ("sort", "123:"), ("sort", "1234>"), ("decisive", "12345|"),
    ("decisive", " 1234|"), ("decisive", 1234),
])
def test_a_malformed_prompt_is_a_value_error_naming_prompt(tasks, name, prompt):
    task = tasks[name]
    for method in (task.reward, task.strict_reward, task.partial_reward, task.process_reward):
        with pytest.raises(ValueError, match="prompt"):
            method(prompt, "1")
    with pytest.raises(ValueError, match="prompt"):
        task.target(prompt)


def test_bad_arguments_are_value_errors_naming_the_argument(tasks):
    listing = r"name must be one of .*reverse.*addition.*sort.*decisive.*'copy'"
    with pytest.raises(ValueError, match=listing):
        make_task("copy")
    with pytest.raises(ValueError, match="completion"):
        tasks["reverse"].reward("4821>", 1284)
    with pytest.raises(ValueError, match="completion"):
        tasks["decisive"].process_reward("1234|", None)
    for kwargs, argument in [({"n_train": 0}, "n_train"), ({"n_eval": -1}, "n_eval"),
                             ({"seed": 1.5}, "seed"), ({"n_train": 8100}, "n_train"),
                             ({"steps": 0}, "steps"), ({"margin": 0.0}, "margin"),
                             ({"max_new_tokens": 2}, "max_new_tokens"),
                             ({"decisive_index": 1}, "decisive_index"),
                             ({"temperature": 1.0}, "temperature")]:
        with pytest.raises(ValueError, match=argument):
            make_task("addition", **{"n_train": 20, "n_eval": 20, **kwargs})
    for index in (-1, 4, True):
        with pytest.raises(ValueError, match="decisive_index"):
            make_task("decisive", n_train=10, n_eval=10, decisive_index=index)
    with pytest.raises(ValueError, match="bias"):
        tasks["sort"].preference_pairs(5, 0, bias="shorter")
    with pytest.raises(ValueError, match="n must"):
        tasks["sort"].preference_pairs(0, 0)
    with pytest.raises(ValueError, match="targets"):
        dataclasses.replace(tasks["sort"], targets={})
    with pytest.raises(ValueError, match="overlap"):
        task = tasks["sort"]
        dataclasses.replace(task, eval_prompts=task.train_prompts[:5])
