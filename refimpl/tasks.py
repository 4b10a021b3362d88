"""Verifiable tasks with rule-based rewards: the tasks the short training runs learn.

Each task is a string-to-string map that a rule computes and checks exactly: no reward model, no
hub download, no data file. Prompts and completions are plain strings over the character
tokenizer's alphabet (``refimpl.models.CHARS``); a completion excludes ``<eos>``, which the
training loop appends (SFT) or strips (sampling) itself.

| task       | prompt                    | target                      | example           | steps |
|------------|---------------------------|-----------------------------|-------------------|-------|
| "reverse"  | 3-5 digits, ">"           | the digits reversed         | "4821>" -> "1284" | 150   |
| "addition" | "a+b=", a, b in 10..99    | str(a + b)                  | "12+34=" -> "46"  | 300   |
| "sort"     | 4-6 digits, ":"           | the digits sorted ascending | "5132:" -> "1235" | 200   |
| "decisive" | 4 digits, "|"             | the digits reversed (*)     | "1234|" -> "4321" | 100   |

(*) "decisive" is the credit-assignment task: its reward looks at a single completion token (index
``decisive_index``, default 2, of the 4), so exactly one token decides the reward and every other
token of a 4-character completion is irrelevant to it. An estimator that assigns credit per
token (a critic, a process reward) can single that token out; an outcome-only one spreads the same
advantage over all four.

Sources
- Algorithmic toy tasks (copy/reverse, addition, sorting) as probes of sequence models:
  Zaremba & Sutskever, "Learning to Execute", 2014, arXiv:1410.4615 (addition); Graves, Wayne &
  Danihelka, "Neural Turing Machines", 2014, arXiv:1410.5401 (copy, priority sort).
- Rule-based ("verifiable") rewards in place of a learned reward model: Lambert et al., "Tulu 3:
  Pushing Frontiers in Open Language Model Post-Training", 2024, arXiv:2411.15124 (RLVR);
  DeepSeek-AI, "DeepSeek-R1", 2025, arXiv:2501.12948, Sec. 2.2.2 (accuracy rewards).
- Outcome vs. process (per-step) rewards: Uesato et al., "Solving Math Word Problems with
  Process- and Outcome-Based Feedback", 2022, arXiv:2211.14275; Lightman et al., "Let's Verify
  Step by Step", 2023, arXiv:2305.20050.
- Length bias of learned reward models (``preference_pairs(..., bias="longer")``): Singhal et al.,
  "A Long Way to Go: Investigating Length Correlations in RLHF", 2023, arXiv:2310.03716; reward
  over-optimisation: Gao, Schulman & Hilton, "Scaling Laws for Reward Model Overoptimization",
  2022, arXiv:2210.10760.

Notation
| symbol | meaning                                                                  |
|--------|--------------------------------------------------------------------------|
| t      | the target completion of a prompt, computed from the prompt by rule      |
| c      | a completion (a str, without ``<eos>``)                                  |
| n, m   | len(t), len(c)                                                           |
| k      | "decisive": the index of the decisive token (``decisive_index``)         |

Rewards (``Task`` methods; ``reward`` is ``strict_reward``)
- strict:  R(c) = 1 if c == t else 0.
- partial: R(c) = (#{i < min(n, m) : c_i = t_i} / n) * (min(n, m) / max(n, m)), in [0, 1]:
  the fraction of target positions right, times a length factor. It is 1 iff c == t (the length
  factor is 1 only when m = n, the fraction only when every position agrees), and 0 for c = "".
  E.g. t = "1284": "1204" -> 3/4; "128" -> 3/4 * 3/4 = 0.5625; "12845" -> 1 * 4/5 = 0.8.
- process: one value per completion character, r_i = 1 if i < n and c_i = t_i else 0 (m values;
  [] for c = "").
- "decisive": strict R(c) = 1 if m = 4 and c_k = t_k else 0; partial = strict (one binary token
  decides, there is no partial credit to give); process r_k = R(c), r_i = 0 for i != k, so the
  process rewards sum to the outcome reward.

Choices the contract leaves to us, and what we chose
- Targets are computed from the prompt by rule (the prompt is parsed), so the rewards work on any
  well-formed prompt of the task, generated or not; a malformed prompt (wrong grammar, digit
  count out of range, an addend outside 10..99) is a ValueError naming ``prompt``.
- Prompts come from ``random.Random(seed)``, never global state: a prompt length uniform over
  the task's range, then uniform digits; duplicates are redrawn. The first ``n_eval`` distinct
  prompts are the held-out eval set and the next ``n_train`` the train set, so the two never
  overlap and the eval set depends only on ``seed`` and ``n_eval``, not on ``n_train``.
- ``max_new_tokens`` is the longest target the task's grammar allows, plus one for ``<eos>``
  (reverse 6, addition 4, sort 7, decisive 5), whatever prompts the seed drew.
- ``Task`` is frozen: whoever saves the tokenizer sets ``tokenizer_path`` with
  ``dataclasses.replace(task, tokenizer_path=...)``. Construction (``make_task`` or ``replace``)
  checks that the splits are disjoint and that ``targets`` holds the rule's target of every
  prompt. Tasks compare by value but are not hashable (their prompt lists are lists).
- ``TASKS`` is the tuple of names; ``make_task`` is the one factory (the registry behind it,
  name -> ``Task`` subclass, is private).
- Preference pairs (``bias=None``): the chosen completion is the target; the rejected one is a
  corruption of it drawn by the rng: change 1 digit, change 2 digits, drop a digit, or duplicate
  a digit (each 1/4). On "decisive" a change always includes the decisive digit, so the rejected
  completion is always wrong under the strict reward.
- Preference pairs (``bias="longer"``), for a deliberately biased reward model: the chosen
  completion is always the longer one, regardless of correctness. Three kinds, 1/3 each:
  (a) the target + 1-2 extra digits (wrong) over the target (right);
  (b) the target (right) over the target with a digit dropped (wrong);
  (c) a changed target + 1-2 extra digits (wrong) over a changed target (wrong).
  Chosen is wrong in (a) and (c); right-over-wrong (b) and wrong-over-right (a) are equally
  likely, so correctness does not predict the preference and length predicts it perfectly: a
  reward model fitted to these pairs rewards length, not correctness.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass, fields
from typing import ClassVar

__all__ = ["TASKS", "Task", "ReverseTask", "AdditionTask", "SortTask", "DecisiveTask",
           "make_task"]

DIGITS = "0123456789"
BIASES = (None, "longer")


def _int(name: str, value: object, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name} must be an int, got {type(value).__name__}")
    if value < low:
        raise ValueError(f"{name} must be >= {low}, got {value}")
    return value


def _str(name: str, value: object) -> str:
    if not isinstance(value, str):
        raise ValueError(f"{name} must be a str, got {type(value).__name__}")
    return value


@dataclass(frozen=True)
class Task:
    """A verifiable task: prompts, their targets, and rule-based rewards (see the module
    docstring). Built by ``make_task``; the subclasses fix the grammar and the rule."""

    name: str
    train_prompts: list[str]
    eval_prompts: list[str]
    targets: dict[str, str]
    max_new_tokens: int
    steps: int
    margin: float = 0.1
    tokenizer_path: str | None = None

    # per-task constants, set by each subclass
    _PATTERN: ClassVar[re.Pattern]
    _GRAMMAR: ClassVar[str]               # the prompt grammar, for error messages
    _MAX_TARGET: ClassVar[int]            # longest target the grammar allows
    _STEPS: ClassVar[int]                 # default RL step budget
    _CAPACITY: ClassVar[int]              # number of distinct well-formed prompts

    def __post_init__(self):
        if type(self) is Task:
            raise ValueError("Task is abstract: build a task with make_task(name, ...)")
        if self.name != _NAME_OF[type(self)]:
            raise ValueError(f"name must be {_NAME_OF[type(self)]!r} for {type(self).__name__}, "
                             f"got {self.name!r}")
        for attr in ("train_prompts", "eval_prompts"):
            prompts = getattr(self, attr)
            if not isinstance(prompts, (list, tuple)) or not prompts:
                raise ValueError(f"{attr} must be a non-empty list of str")
            object.__setattr__(self, attr, list(prompts))
        if set(self.train_prompts) & set(self.eval_prompts):
            raise ValueError("train_prompts and eval_prompts overlap; they must be disjoint")
        if not isinstance(self.targets, dict):
            raise ValueError(f"targets must be a dict, got {type(self.targets).__name__}")
        for p in self.train_prompts + self.eval_prompts:
            if self.targets.get(p) != self.target(p):
                raise ValueError(f"targets[{p!r}] must be {self.target(p)!r}, got "
                                 f"{self.targets.get(p)!r}")
        _int("max_new_tokens", self.max_new_tokens, self._MAX_TARGET + 1)
        _int("steps", self.steps, 1)
        if isinstance(self.margin, bool) or not isinstance(self.margin, (int, float)) \
                or not 0 < self.margin <= 1:
            raise ValueError(f"margin must be a number in (0, 1], got {self.margin!r}")
        if self.tokenizer_path is not None:
            _str("tokenizer_path", self.tokenizer_path)

    # -- the rule ---------------------------------------------------------------------------

    @classmethod
    def _solve(cls, match: re.Match) -> str:
        raise NotImplementedError

    @classmethod
    def _draw(cls, rng: random.Random) -> str:
        raise NotImplementedError

    @classmethod
    def _target_of(cls, prompt: object) -> str:
        match = cls._PATTERN.fullmatch(_str("prompt", prompt))
        if match is None:
            raise ValueError(f"prompt {prompt!r} is malformed for this task: expected "
                             f"{cls._GRAMMAR}")
        return cls._solve(match)

    def target(self, prompt: str) -> str:
        """The correct completion of ``prompt``, computed by the task's rule."""
        return self._target_of(prompt)

    # -- rewards ----------------------------------------------------------------------------

    def _pair(self, prompt: str, completion: str) -> tuple[str, str]:
        return self.target(prompt), _str("completion", completion)

    def reward(self, prompt: str, completion: str) -> float:
        """The task's default reward: ``strict_reward``."""
        return self.strict_reward(prompt, completion)

    def strict_reward(self, prompt: str, completion: str) -> float:
        """1.0 if the completion is the target exactly, else 0.0."""
        t, c = self._pair(prompt, completion)
        return 1.0 if c == t else 0.0

    def partial_reward(self, prompt: str, completion: str) -> float:
        """(#positions right / len(t)) * min(len(c), len(t)) / max(len(c), len(t)); 1.0 iff
        exact."""
        t, c = self._pair(prompt, completion)
        shared = min(len(c), len(t))
        right = sum(c[i] == t[i] for i in range(shared))
        return (right / len(t)) * (shared / max(len(c), len(t)))

    def process_reward(self, prompt: str, completion: str) -> list[float]:
        """One value per completion character: 1.0 where it equals the target's character at the
        same position, else 0.0."""
        t, c = self._pair(prompt, completion)
        return [1.0 if i < len(t) and ch == t[i] else 0.0 for i, ch in enumerate(c)]

    # -- preference pairs -------------------------------------------------------------------

    def _changed_positions(self, t: str, count: int, rng: random.Random) -> list[int]:
        return rng.sample(range(len(t)), count)

    def _change(self, t: str, count: int, rng: random.Random) -> str:
        chars = list(t)
        for i in self._changed_positions(t, count, rng):
            chars[i] = rng.choice([d for d in DIGITS if d != t[i]])
        return "".join(chars)

    def _corrupt(self, t: str, rng: random.Random) -> str:
        how = rng.randrange(4)
        if how < 2:                                          # change 1 or 2 digits
            return self._change(t, min(how + 1, len(t)), rng)
        i = rng.randrange(len(t))
        if how == 2 and len(t) > 1:                          # drop a digit
            return t[:i] + t[i + 1:]
        return t[:i + 1] + t[i] + t[i + 1:]                  # duplicate a digit

    @staticmethod
    def _extra(rng: random.Random) -> str:
        return "".join(rng.choice(DIGITS) for _ in range(rng.randint(1, 2)))

    def preference_pairs(self, n: int, seed: int, *,
                         bias: str | None = None) -> list[tuple[str, str, str]]:
        """``n`` pairs ``(prompt, chosen, rejected)`` on prompts drawn (with replacement) from
        ``train_prompts`` by ``random.Random(seed)``.

        ``bias=None``: chosen is the target, rejected a corruption of it (always wrong).
        ``bias="longer"``: chosen is the longer completion, right or wrong (module docstring).
        """
        _int("n", n, 1)
        _int("seed", seed, -(2 ** 63))
        if bias not in BIASES:
            raise ValueError(f"bias must be one of {BIASES}, got {bias!r}")
        rng = random.Random(seed)
        pairs = []
        for _ in range(n):
            prompt = rng.choice(self.train_prompts)
            t = self.targets[prompt]
            if bias is None:
                pairs.append((prompt, t, self._corrupt(t, rng)))
                continue
            kind = rng.randrange(3)
            if kind == 0:                                    # longer wrong over right
                pairs.append((prompt, t + self._extra(rng), t))
            elif kind == 1:                                  # right over shorter wrong
                i = rng.randrange(len(t))
                pairs.append((prompt, t, t[:i] + t[i + 1:]))
            else:                                            # longer wrong over wrong
                longer = self._change(t, 1, rng) + self._extra(rng)
                pairs.append((prompt, longer, self._change(t, 1, rng)))
        return pairs


def _digits(rng: random.Random, low: int, high: int) -> str:
    return "".join(rng.choice(DIGITS) for _ in range(rng.randint(low, high)))


@dataclass(frozen=True)
class ReverseTask(Task):
    """Prompt "<3-5 digits>>", target the digits reversed."""

    _PATTERN = re.compile(r"([0-9]{3,5})>")
    _GRAMMAR = "3 to 5 digits then '>', e.g. '4821>'"
    _MAX_TARGET = 5
    _STEPS = 150
    _CAPACITY = 10 ** 3 + 10 ** 4 + 10 ** 5

    @classmethod
    def _solve(cls, match):
        return match[1][::-1]

    @classmethod
    def _draw(cls, rng):
        return _digits(rng, 3, 5) + ">"


@dataclass(frozen=True)
class AdditionTask(Task):
    """Prompt "a+b=" with a, b in 10..99, target str(a + b)."""

    _PATTERN = re.compile(r"([1-9][0-9])\+([1-9][0-9])=")
    _GRAMMAR = "'a+b=' with two-digit a and b in 10..99, e.g. '12+34='"
    _MAX_TARGET = 3
    _STEPS = 300
    _CAPACITY = 90 * 90

    @classmethod
    def _solve(cls, match):
        return str(int(match[1]) + int(match[2]))

    @classmethod
    def _draw(cls, rng):
        return f"{rng.randint(10, 99)}+{rng.randint(10, 99)}="


@dataclass(frozen=True)
class SortTask(Task):
    """Prompt "<4-6 digits>:", target the digits sorted ascending."""

    _PATTERN = re.compile(r"([0-9]{4,6}):")
    _GRAMMAR = "4 to 6 digits then ':', e.g. '5132:'"
    _MAX_TARGET = 6
    _STEPS = 200
    _CAPACITY = 10 ** 4 + 10 ** 5 + 10 ** 6

    @classmethod
    def _solve(cls, match):
        return "".join(sorted(match[1]))

    @classmethod
    def _draw(cls, rng):
        return _digits(rng, 4, 6) + ":"


@dataclass(frozen=True)
class DecisiveTask(Task):
    """Prompt "<4 digits>|", target the digits reversed; only the token at ``decisive_index``
    (of a 4-character completion) decides the reward: exactly one token decides it."""

    decisive_index: int = 2

    _PATTERN = re.compile(r"([0-9]{4})\|")
    _GRAMMAR = "4 digits then '|', e.g. '1234|'"
    _MAX_TARGET = 4
    _STEPS = 100
    _CAPACITY = 10 ** 4

    def __post_init__(self):
        super().__post_init__()
        _int("decisive_index", self.decisive_index, 0)
        if self.decisive_index >= self._MAX_TARGET:
            raise ValueError(f"decisive_index must be in 0..{self._MAX_TARGET - 1}, got "
                             f"{self.decisive_index}")

    @classmethod
    def _solve(cls, match):
        return match[1][::-1]

    @classmethod
    def _draw(cls, rng):
        return _digits(rng, 4, 4) + "|"

    def strict_reward(self, prompt, completion):
        """1.0 if the completion has 4 characters and its decisive one is right, else 0.0."""
        t, c = self._pair(prompt, completion)
        k = self.decisive_index
        return 1.0 if len(c) == len(t) and c[k] == t[k] else 0.0

    def partial_reward(self, prompt, completion):
        """The strict reward: one binary token decides, there is no partial credit."""
        return self.strict_reward(prompt, completion)

    def process_reward(self, prompt, completion):
        """The outcome reward at the decisive position, 0.0 elsewhere (sums to the reward)."""
        outcome = self.strict_reward(prompt, completion)
        return [outcome if i == self.decisive_index else 0.0 for i in range(len(completion))]

    def _changed_positions(self, t, count, rng):
        """Always the decisive digit (plus others), so a changed target is wrong."""
        k = self.decisive_index
        return [k] + rng.sample([i for i in range(len(t)) if i != k], count - 1)


_KINDS: dict[str, type[Task]] = {"reverse": ReverseTask, "addition": AdditionTask,
                                 "sort": SortTask, "decisive": DecisiveTask}
_NAME_OF = {cls: name for name, cls in _KINDS.items()}
#: The task names ``make_task`` knows.
TASKS = tuple(_KINDS)


def make_task(name: str, seed: int = 0, n_train: int = 2000, n_eval: int = 200,
              **options) -> Task:
    """The task ``name`` with ``n_eval`` held-out and ``n_train`` train prompts drawn from
    ``random.Random(seed)``.

    ``options`` override the task's fields: ``steps``, ``margin``, ``max_new_tokens``,
    ``tokenizer_path``, and for "decisive" ``decisive_index``.
    """
    if name not in _KINDS:
        raise ValueError(f"name must be one of {TASKS}, got {name!r}")
    cls = _KINDS[name]
    seed = _int("seed", seed, -(2 ** 63))
    n_train, n_eval = _int("n_train", n_train, 1), _int("n_eval", n_eval, 1)
    fixed = {"name", "train_prompts", "eval_prompts", "targets"}
    allowed = sorted(f.name for f in fields(cls) if f.name not in fixed)
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise ValueError(f"options: unknown option(s) {unknown} for task {name!r}; allowed: "
                         f"{allowed}")
    if n_train + n_eval > cls._CAPACITY:
        raise ValueError(f"n_train + n_eval = {n_train + n_eval} exceeds the {cls._CAPACITY} "
                         f"distinct prompts of task {name!r}")
    rng = random.Random(seed)
    drawn: dict[str, None] = {}                      # insertion-ordered set
    while len(drawn) < n_eval + n_train:
        drawn.setdefault(cls._draw(rng))
    prompts = list(drawn)
    fields_ = {"max_new_tokens": cls._MAX_TARGET + 1, "steps": cls._STEPS}
    fields_.update(options)
    return cls(name=name, train_prompts=prompts[n_eval:], eval_prompts=prompts[:n_eval],
               targets={p: cls._target_of(p) for p in prompts}, **fields_)
